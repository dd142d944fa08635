// Drives a running FeatureFlow server with the official openai client: a plain streamed completion, a steered
// one (the `steering` extension field), a non-streamed one with usage, and a chat completion that must fail with
// the server's clear 400. Prints one JSON object with what it saw; exits non-zero on any surprise.
import OpenAI from "openai";

const [baseURL, apiKey = "unused"] = process.argv.slice(2);
if (!baseURL) {
  console.error("usage: node test.mjs BASE_URL [API_KEY]");
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

async function streamed(extra) {
  const stream = await client.completions.create({
    model: "stories260k", prompt: "Once upon a time", max_tokens: 24, temperature: 0, stream: true,
    stream_options: { include_usage: true }, ...extra,
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length > 0) text += chunk.choices[0].text;
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, usage };
}

const plain = await streamed({});
const steered = await streamed({ steering: { terms: [{ pack: { name: "happy", strength: 1.5 } }] } });
const whole = await client.completions.create({ model: "stories260k", prompt: "Once upon a time", max_tokens: 24, temperature: 0 });

let chat;
try {
  await client.chat.completions.create({ model: "stories260k", messages: [{ role: "user", content: "hi" }] });
  chat = { status: 200 };
} catch (e) {
  chat = { status: e.status, code: e.code ?? e.error?.code, param: e.param ?? e.error?.param };
}

console.log(JSON.stringify({ plain, steered, whole: { text: whole.choices[0].text, usage: whole.usage }, chat }));

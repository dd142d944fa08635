// Writes hf_reference.json: ids from Hugging Face's own tokenizers library (Rust, through the npm package
// @anush008/tokenizers 0.6.0) for texts the GPT-2 fixtures' reference prompts do not cover. Not run by the tests;
// rerun by hand after `npm install @anush008/tokenizers@0.6.0` in any folder, with NODE_PATH pointing there:
//   NODE_PATH=/path/node_modules node make_hf_reference.js
const { Tokenizer } = require('@anush008/tokenizers');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '../../../..');
const files = {
  'torch-tiny-gpt2': 'tests/fixtures/onnx-exports/torch-tiny-gpt2/tokenizer.json',
  'genai-tiny-random-gpt2': 'tests/fixtures/onnx-exports/genai-tiny-random-gpt2/tokenizer.json',
};
const texts = [
  'héllo wörld, naïve café',
  'Emoji 😀👍🏽 and CJK 日本語のテキスト',
  'a  b   c    d',
  'x\t\ty\t\t\tz',
  'line one\nline two\r\n\n  indented',
  "I'm sure they'll say it's John's and we've",
  'numbers 12345 3.14159 -7',
  'before<|endoftext|>after',
  '   leading and trailing   ',
  '',
];

(async () => {
  const out = { generator: 'Hugging Face tokenizers via npm @anush008/tokenizers 0.6.0, encode(text, addSpecialTokens: false)', tokenizers: {} };
  for (const [name, file] of Object.entries(files)) {
    const tokenizer = Tokenizer.fromFile(path.join(root, file));
    const cases = [];
    for (const text of texts) {
      const encoding = await tokenizer.encode(text, null, { addSpecialTokens: false });
      cases.push({ text, ids: encoding.getIds() });
    }
    out.tokenizers[name] = { file, cases };
  }
  fs.writeFileSync(path.join(__dirname, 'hf_reference.json'), JSON.stringify(out, null, 1) + '\n');
})();

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
  'torch-tiny-gpt2-llama3-style': 'tests/fixtures/onnx-exports/torch-tiny-gpt2/tokenizer.json',
};
// The GPT-2 vocabulary under Llama 3's pre-tokenizer (a Split regex, then ByteLevel without its own regex) and
// ignore_merges; HfByteLevelBpeTests.Llama3Style builds the same file.
const llama3Pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
function llama3Style(gpt2) {
  const json = JSON.parse(fs.readFileSync(gpt2, 'utf8'));
  json.pre_tokenizer = { type: 'Sequence', pretokenizers: [
    { type: 'Split', pattern: { Regex: llama3Pattern }, behavior: 'Isolated', invert: false },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
  ] };
  json.model.ignore_merges = true;
  const file = path.join(require('os').tmpdir(), 'llama3-style-tokenizer.json');
  fs.writeFileSync(file, JSON.stringify(json));
  return file;
}

const texts = [
  'héllo wörld, naïve café',
  'Emoji 😀👍🏽 and CJK 日本語のテキスト',
  'a  b   c    d',
  'x\t\ty\t\t\tz',
  'line one\nline two\r\n\n  indented',
  "I'm sure they'll say it's John's and we've",
  'numbers 12345 3.14159 -7 1234567',
  "SHOUTING IT'S DON'T\n\n\n  x",
  'before<|endoftext|>after',
  '   leading and trailing   ',
  '',
];

(async () => {
  const out = { generator: 'Hugging Face tokenizers via npm @anush008/tokenizers 0.6.0, encode(text, addSpecialTokens: false)', tokenizers: {} };
  for (const [name, file] of Object.entries(files)) {
    const full = path.join(root, file);
    const tokenizer = Tokenizer.fromFile(name.endsWith('llama3-style') ? llama3Style(full) : full);
    const cases = [];
    for (const text of texts) {
      const encoding = await tokenizer.encode(text, null, { addSpecialTokens: false });
      cases.push({ text, ids: encoding.getIds() });
    }
    out.tokenizers[name] = { file, cases };
  }
  fs.writeFileSync(path.join(__dirname, 'hf_reference.json'), JSON.stringify(out, null, 1) + '\n');
})();

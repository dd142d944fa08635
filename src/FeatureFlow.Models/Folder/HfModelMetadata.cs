using System.Text.Json;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Folder;

/// <summary>
/// What a Hugging Face or ONNX Runtime GenAI model folder says about generation: context length, special
/// token ids and whether it has a chat template. Each value is taken from the first file that states it, in the
/// order <c>genai_config.json</c> (what GenAI runs with), <c>generation_config.json</c> (what
/// <c>generate()</c> uses), <c>config.json</c>, then <c>tokenizer_config.json</c>, whose token strings are
/// looked up in <c>tokenizer.json</c>.
/// </summary>
public sealed record HfModelMetadata
{
    public const string ConfigFile = "config.json";
    public const string GenerationConfigFile = "generation_config.json";
    public const string TokenizerConfigFile = "tokenizer_config.json";
    public const string TokenizerFile = "tokenizer.json";
    public const string ChatTemplateFile = "chat_template.jinja";

    // tokenizer_config.json's model_max_length is 1e30 when the tokenizer sets no limit.
    private const double NoLimit = int.MaxValue;

    public int? ContextLength { get; init; }
    public int? VocabSize { get; init; }
    public int? BosId { get; init; }
    /// <summary>Every id that ends generation (Llama 3 instruct lists several); the first is the tokenizer's EOS.</summary>
    public IReadOnlyList<int> EosIds { get; init; } = [];
    public int? PadId { get; init; }
    /// <summary>The Jinja chat template, or null when the folder has none.</summary>
    public string? ChatTemplate { get; init; }
    public bool HasChatTemplate => ChatTemplate is not null;

    /// <summary>The files read, in the order their values win.</summary>
    public static IReadOnlyList<string> Files { get; } =
        [GenAiConfig.FileName, GenerationConfigFile, ConfigFile, TokenizerConfigFile];

    public static HfModelMetadata Read(string directory)
    {
        var files = Files.Select(name => Path.Combine(directory, name)).Where(File.Exists).ToArray();
        if (files.Length == 0)
            throw new FileNotFoundException(
                $"{directory}: none of {string.Join(", ", Files)} is there");
        var documents = files.Select(HfJson.Parse).ToArray();
        try
        {
            var roots = files.Zip(documents, (file, doc) => HfJson.Root(file, doc)).ToArray();
            var genAi = roots.Where(r => Path.GetFileName(r.File) == GenAiConfig.FileName).Select(r => r.Required("model"));
            var generation = roots.Where(r => Path.GetFileName(r.File) == GenerationConfigFile);
            // Multimodal configs keep the language model's values under text_config.
            var config = roots.Where(r => Path.GetFileName(r.File) == ConfigFile)
                .SelectMany(r => r.Optional("text_config") is { } text ? new[] { r, text } : [r]);
            var tokenizerConfig = roots.Where(r => Path.GetFileName(r.File) == TokenizerConfigFile).ToArray();
            var numeric = genAi.Concat(generation).Concat(config).ToArray();
            var tokenIds = new Lazy<TokenIds>(() => new TokenIds(Path.Combine(directory, TokenizerFile)));

            int? TokenId(string field, string tokenField) =>
                FirstNumber(numeric, field, v => Ids(v) is { Length: > 0 } ids ? ids[0] : null)
                ?? FirstNumber(tokenizerConfig, tokenField, v => tokenIds.Value.Find(TokenString(v)));

            var eosIds = First(numeric, "eos_token_id", v => Ids(v) is { Length: > 0 } ids ? ids : null)
                         ?? (FirstNumber(tokenizerConfig, "eos_token", v => tokenIds.Value.Find(TokenString(v))) is { } eos
                             ? [eos] : []);
            return new HfModelMetadata
            {
                ContextLength = FirstNumber(numeric, "context_length", v => v.Int())
                                ?? FirstNumber(numeric, "max_position_embeddings", v => v.Int())
                                ?? FirstNumber(numeric, "n_positions", v => v.Int())
                                ?? FirstNumber(numeric, "n_ctx", v => v.Int())
                                ?? FirstNumber(tokenizerConfig, "model_max_length",
                                    v => v.Double() < NoLimit ? v.Int() : null),
                VocabSize = FirstNumber(numeric, "vocab_size", v => v.Int()),
                BosId = TokenId("bos_token_id", "bos_token"),
                EosIds = eosIds,
                PadId = TokenId("pad_token_id", "pad_token"),
                ChatTemplate = First(tokenizerConfig, "chat_template", Template) ?? TemplateFile(directory),
            };
        }
        finally
        {
            foreach (var document in documents) document.Dispose();
        }
    }

    private static int? FirstNumber(IEnumerable<HfJson> sources, string field, Func<HfJson, int?> read)
    {
        foreach (var source in sources)
            if (source.Optional(field) is { } value && read(value) is { } result) return result;
        return null;
    }

    private static T? First<T>(IEnumerable<HfJson> sources, string field, Func<HfJson, T?> read) where T : class
    {
        foreach (var source in sources)
            if (source.Optional(field) is { } value && read(value) is { } result) return result;
        return null;
    }

    /// <summary>A token id field: one number or a list of them.</summary>
    private static int[] Ids(HfJson value) =>
        value.Element.ValueKind == JsonValueKind.Array ? value.Array().Select(v => v.Int()).ToArray() : [value.Int()];

    /// <summary>A tokenizer_config token: a string, or an AddedToken object with its content.</summary>
    private static string TokenString(HfJson value) =>
        value.Element.ValueKind == JsonValueKind.String ? value.String() : value.Required("content").String();

    /// <summary>One template, or the one named "default" from a list of named templates.</summary>
    private static string? Template(HfJson value)
    {
        if (value.Element.ValueKind == JsonValueKind.String) return value.String();
        var named = value.Array().Select(t => (Name: t.Required("name").String(), Text: t.Required("template").String()));
        return named.FirstOrDefault(t => t.Name == "default").Text;
    }

    private static string? TemplateFile(string directory)
    {
        var path = Path.Combine(directory, ChatTemplateFile);
        return File.Exists(path) ? File.ReadAllText(path) : null;
    }

    /// <summary>Token strings to ids through tokenizer.json's added tokens and vocabulary.</summary>
    private sealed class TokenIds
    {
        private readonly string _path;
        private readonly Dictionary<string, int> _ids = new(StringComparer.Ordinal);

        public TokenIds(string path)
        {
            _path = path;
            using var document = HfJson.Parse(path);
            var root = HfJson.Root(path, document);
            if (root.Required("model").Optional("vocab") is { Element.ValueKind: JsonValueKind.Object } vocab)
                foreach (var (piece, id) in vocab.Properties()) _ids.TryAdd(piece, id.Int());
            foreach (var token in root.Optional("added_tokens")?.Array() ?? [])
                _ids[token.Required("content").String()] = token.Required("id").Int();
        }

        public int? Find(string token) =>
            _ids.TryGetValue(token, out var id) ? id
                : throw new InvalidDataException(
                    $"{_path}: token '{token}' named in {TokenizerConfigFile} is not in its vocabulary");
    }
}

namespace FeatureFlow.Steering;

/// <summary>A request field holds a value the server cannot use. <see cref="Field"/> is the API field path.</summary>
public sealed class FieldValidationException(string field, string message) : Exception($"{field}: {message}")
{
    public string Field { get; } = field;
}

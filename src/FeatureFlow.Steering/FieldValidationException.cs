namespace FeatureFlow.Steering;

/// <summary>
/// A request field holds a value the server cannot use. <see cref="Field"/> is the API field path. Not sealed so that
/// refusals a client should handle differently (see <c>PackNotFoundException</c>) stay catchable as field errors.
/// </summary>
public class FieldValidationException(string field, string message) : Exception($"{field}: {message}")
{
    public string Field { get; } = field;
}

using System.Security.Cryptography.X509Certificates;

namespace FeatureFlow.Server.Security;

/// <summary>The certificate both endpoints serve TLS with (<see cref="ServerOptions.TlsCertificateFile"/>).</summary>
public static class TlsCertificate
{
    /// <summary>The PEM certificate and private key, or null when TLS is off; only one of the two is an error.</summary>
    public static X509Certificate2? Load(ServerOptions options)
    {
        var (cert, key) = (options.TlsCertificateFile, options.TlsKeyFile);
        if (cert is null && key is null) return null;
        if (cert is null || key is null)
            throw new ArgumentException("TLS needs both --tls-cert and --tls-key (PEM files)");
        try
        {
            return X509Certificate2.CreateFromPemFile(cert, key);
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            // Start-up reports it like any other bad input file, by path and reason.
            throw new InvalidDataException($"{cert}, {key}: not a PEM certificate and its private key: {e.Message}", e);
        }
    }
}

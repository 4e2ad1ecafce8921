//! Development certificates (`dermgate certs dev`): never for production.
//!
//! Writes a development CA, a server certificate for `localhost`, `127.0.0.1`,
//! `::1` and any extra names, a device CA and one device certificate whose id
//! travels in a SAN URI (`urn:dermgate:device:<id>`), all as PEM files with
//! private keys readable by the owner only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// What `certs dev` wrote.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// Development CA certificate (trust this in a browser to use the demo).
    pub ca_cert: PathBuf,
    /// Server certificate chain (leaf, then CA).
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Device CA certificate.
    pub device_ca_cert: PathBuf,
    /// One device certificate.
    pub device_cert: PathBuf,
    /// Its private key.
    pub device_key: PathBuf,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "dermgate development (DEV ONLY)");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid_for(&mut p, CA_DAYS);
    p
}

fn write(dir: &Path, file: &str, contents: &str, private: bool) -> Result<PathBuf, CertError> {
    let path = dir.join(file);
    let err = |source| CertError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    use std::io::Write;
    let mut f = opts.open(&path).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    Ok(path)
}

/// Leaf certificates live as long as a public CA would allow (398 days at most).
const LEAF_DAYS: i64 = 397;
/// The development CAs: ten years.
const CA_DAYS: i64 = 3650;

/// Valid from yesterday (clock skew) for `days` days: real lifetimes, so that
/// expiry warnings and the evidence report have real dates to show.
fn valid_for(p: &mut CertificateParams, days: i64) {
    let today = jiff::tz::Offset::UTC
        .to_datetime(jiff::Timestamp::now())
        .date();
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    if let (Ok(from), Ok(to)) = (
        today.checked_sub(jiff::Span::new().days(1)),
        today.checked_add(jiff::Span::new().days(days)),
    ) {
        p.not_before = ymd(from);
        p.not_after = ymd(to);
    }
}

/// Generates the development certificate set into `dir` (created if missing).
pub fn generate_dev(dir: &Path, extra_names: &[String]) -> Result<DevCerts, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let ca = CertifiedIssuer::self_signed(
        ca_params("dermgate development CA (DEV ONLY)"),
        KeyPair::generate()?,
    )?;

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in extra_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let mut server = CertificateParams::new(names)?;
    server.distinguished_name = name("dermgate development server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    valid_for(&mut server, LEAF_DAYS);
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let device_ca = CertifiedIssuer::self_signed(
        ca_params("dermgate development device CA (DEV ONLY)"),
        KeyPair::generate()?,
    )?;
    let mut device = CertificateParams::default();
    device.distinguished_name = name("dev-laptop-1");
    device.subject_alt_names = vec![SanType::URI("urn:dermgate:device:dev-laptop-1".try_into()?)];
    device.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    device.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    valid_for(&mut device, LEAF_DAYS);
    let device_key = KeyPair::generate()?;
    let device_cert = device.signed_by(&device_key, &device_ca)?;

    Ok(DevCerts {
        ca_cert: write(dir, "ca.pem", &ca.pem(), false)?,
        server_cert: write(
            dir,
            "server.pem",
            &format!("{}{}", server_cert.pem(), ca.pem()),
            false,
        )?,
        server_key: write(dir, "server.key", &server_key.serialize_pem(), true)?,
        device_ca_cert: write(dir, "device-ca.pem", &device_ca.pem(), false)?,
        device_cert: write(dir, "device.pem", &device_cert.pem(), false)?,
        device_key: write(dir, "device.key", &device_key.serialize_pem(), true)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_as_tls_material() {
        let dir = std::env::temp_dir().join(format!("dermgate-certs-{}", std::process::id()));
        let c = generate_dev(&dir, &["ehr.localhost".into()]).unwrap();
        crate::tls::server_config(&c.server_cert, &c.server_key).unwrap();
        crate::tls::load_roots(&c.ca_cert).unwrap();
        crate::tls::load_roots(&c.device_ca_cert).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The subject and expiry (`notAfter`) of every certificate in a PEM bundle;
/// blocks that do not parse are skipped.
pub fn expiries(pem: &[u8]) -> Vec<(String, jiff::Timestamp)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .flatten()
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let at = jiff::Timestamp::from_second(cert.validity().not_after.timestamp()).ok()?;
            Some((cert.subject().to_string(), at))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod expiry_tests {
    #[test]
    fn reads_not_after_of_each_certificate() {
        let dir = std::env::temp_dir().join(format!("dermgate-expiry-{}", std::process::id()));
        let dev = super::generate_dev(&dir, &[]).unwrap();
        let pem = std::fs::read(&dev.server_cert).unwrap();
        let e = super::expiries(&pem);
        assert_eq!(e.len(), 2, "leaf and CA");
        assert!(e.iter().all(|(_, t)| *t > jiff::Timestamp::now()));
        let _ = std::fs::remove_dir_all(dir);
    }
}

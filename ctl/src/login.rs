//! `napalmctl login`: an operator's client certificate for the coordinator's TLS listener.
//! The key is generated here and never leaves this machine; the coordinator signs a CSR
//! over it (`TrustService.IssueOperatorCertificate`, with the admin token on the API
//! listener or an admin's certificate over mutual TLS) in the role asked for, `admin` or
//! `viewer`. The identity directory it writes holds `ca.crt`, `operator.crt` (chain),
//! `operator.key` (mode 0600) and a `napalmctl.yaml` naming the TLS endpoints and the
//! directory, for `NAPALM_CONFIG`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use napalm_proto::trust_v1::IssueOperatorCertificateRequest;

use crate::config::Settings;
use crate::connect::IdentityFiles;
use crate::{from_status, Failure};

/// `napalmctl login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Operator name the certificate carries: lower-case letters, digits and '-'.
    #[arg(long)]
    pub name: String,
    /// `admin` (everything) or `viewer` (listings, lookups, events).
    #[arg(long, default_value = "admin")]
    pub role: String,
    /// Lifetime: 90s, 15m, 2h, 7d [default: the coordinator's, 7 days].
    #[arg(long, value_parser = crate::token::parse_ttl)]
    pub ttl: Option<u64>,
    /// Directory to write the identity to [default: the user's config directory's
    /// napalm/login-NAME].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn failed(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure {
        code: 1,
        message: format!("{what} {}: {e}", path.display()),
    }
}

/// `dir`/`name` written with `mode`, replacing what was there.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), Failure> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| failed("cannot write", &tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| failed("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| failed("cannot write", path, e))
}

fn default_dir(name: &str) -> Result<PathBuf, Failure> {
    let base = match std::env::var("XDG_CONFIG_HOME")
        .ok()
        .filter(|p| Path::new(p).is_absolute())
    {
        Some(x) => PathBuf::from(x),
        None => match std::env::var("HOME").ok().filter(|h| !h.is_empty()) {
            Some(h) => Path::new(&h).join(".config"),
            None => {
                return Err(Failure {
                    code: 2,
                    message: "neither XDG_CONFIG_HOME nor HOME is set: give --dir".into(),
                })
            }
        },
    };
    Ok(base.join("napalm").join(format!("login-{name}")))
}

/// Runs `napalmctl login`; returns what to print.
pub async fn run(settings: &Settings, args: &LoginArgs) -> Result<String, Failure> {
    let role = args.role.as_str();
    if !matches!(role, "admin" | "viewer") {
        return Err(Failure {
            code: 2,
            message: format!("--role {role:?} is not a role: use admin or viewer"),
        });
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => default_dir(&args.name)?,
    };
    let (key, csr) = napalm_trust::csr::generate(&args.name).map_err(|e| Failure {
        code: 2,
        message: format!("--name {:?}: {e}", args.name),
    })?;
    let issued = crate::token::client(settings)
        .await?
        .issue_operator_certificate(IssueOperatorCertificateRequest {
            name: args.name.clone(),
            role: role.into(),
            csr_pem: csr,
            ttl_seconds: args.ttl.unwrap_or(0),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let Some(cert) = issued.certificate else {
        return Err(Failure {
            code: 1,
            message: "the coordinator answered without a certificate".into(),
        });
    };
    std::fs::create_dir_all(&dir).map_err(|e| failed("cannot create", &dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed("cannot restrict", &dir, e))?;
    let files = IdentityFiles::in_dir(&dir);
    write(&files.key, &key, 0o600)?;
    write(
        &files.cert,
        &format!("{}{}", cert.cert_pem, cert.ca_pem),
        0o644,
    )?;
    write(&files.ca, &cert.ca_pem, 0o644)?;
    let endpoints: Vec<String> = issued
        .endpoints
        .iter()
        .map(|e| format!("https://{e}"))
        .collect();
    let config = dir.join("napalmctl.yaml");
    write(
        &config,
        &format!(
            "# written by napalmctl login: operator {} ({role})\ncoordinator: {}\nidentity: {}\n",
            args.name,
            endpoints.join(","),
            dir.display()
        ),
        0o600,
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let hours = (cert.not_after - now).max(0) / 3600;
    Ok(format!(
        "logged in as {} ({role}) for {hours} h (certificate expires at Unix time {}); \
         identity in {}\nuse it: export NAPALM_CONFIG={}\n",
        args.name,
        cert.not_after,
        dir.display(),
        config.display()
    ))
}

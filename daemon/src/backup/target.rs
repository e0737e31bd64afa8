//! Where a backup goes, as the user names it, and the storage it opens (OpenDAL).
//!
//! - a directory: a path (a USB stick, or the folder a Google Drive, iCloud Drive, Dropbox or
//!   Syncthing client syncs: that is how a backup reaches the user's cloud with no account of
//!   ours), or `file:///path`;
//! - any S3-compatible store: `s3://bucket/prefix`, with `?endpoint=URL` (and `&region=NAME`)
//!   for stores other than AWS; credentials as `s3://KEY_ID:SECRET@bucket/prefix`, or from
//!   `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` in the daemon's environment;
//! - WebDAV: `webdav+https://host/path` (or `webdav+http://`), with the user and password in
//!   the URL or in `CHATSYNC_WEBDAV_USER` and `CHATSYNC_WEBDAV_PASSWORD`.

use std::path::PathBuf;

use opendal::Operator;

use super::BackupError;

/// A parsed backup target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Directory(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        /// Access key id and secret given in the target (else from the environment).
        credentials: Option<(String, String)>,
    },
    Webdav {
        endpoint: String,
        root: String,
        user: Option<String>,
        password: Option<String>,
    },
}

impl Target {
    /// Parses a target as the user typed it; a relative directory is taken from `cwd`.
    pub fn parse(text: &str, cwd: Option<&std::path::Path>) -> Result<Target, BackupError> {
        let bad = |why: &str| BackupError::Invalid(format!("backup target {text:?}: {why}"));
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("empty"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (credentials, location) = match location.split_once('@') {
                Some((userinfo, location)) => match userinfo.split_once(':') {
                    Some((id, secret)) => (Some((id.to_string(), secret.to_string())), location),
                    None => return Err(bad("credentials must be KEY_ID:SECRET")),
                },
                None => (None, location),
            };
            let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let mut endpoint = None;
            let mut region = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("endpoint", v)) => endpoint = Some(v.to_string()),
                    Some(("region", v)) => region = Some(v.to_string()),
                    _ => return Err(bad(&format!("unknown setting {pair:?}"))),
                }
            }
            return Ok(Target::S3 {
                bucket: bucket.to_string(),
                prefix: format!("/{}", prefix.trim_matches('/')),
                endpoint,
                region,
                credentials,
            });
        }
        for (scheme, http) in [
            ("webdav+https://", "https://"),
            ("webdav+http://", "http://"),
        ] {
            if let Some(rest) = text.strip_prefix(scheme) {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (userinfo, host) = match authority.rsplit_once('@') {
                    Some((userinfo, host)) => (Some(userinfo), host),
                    None => (None, authority),
                };
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                let (user, password) = match userinfo.map(|u| u.split_once(':')) {
                    Some(Some((u, p))) => (Some(u.to_string()), Some(p.to_string())),
                    Some(None) => (userinfo.map(str::to_string), None),
                    None => (None, None),
                };
                return Ok(Target::Webdav {
                    endpoint: format!("{http}{host}"),
                    root: format!("/{}/", path.trim_matches('/')),
                    user,
                    password,
                });
            }
        }
        if text.contains("://") && !text.starts_with("file://") {
            return Err(bad("not a directory, s3:// or webdav+http(s):// target"));
        }
        let path = PathBuf::from(text.strip_prefix("file://").unwrap_or(text));
        let path = match (path.is_absolute(), cwd) {
            (true, _) => path,
            (false, Some(cwd)) => cwd.join(path),
            (false, None) => return Err(bad("a relative directory needs the caller's directory")),
        };
        Ok(Target::Directory(path))
    }

    /// The target as it is shown and kept: no password.
    pub fn display(&self) -> String {
        match self {
            Target::Directory(path) => path.display().to_string(),
            Target::S3 {
                bucket,
                prefix,
                endpoint,
                ..
            } => match endpoint {
                Some(endpoint) => format!("s3://{bucket}{prefix} at {endpoint}"),
                None => format!("s3://{bucket}{prefix}"),
            },
            Target::Webdav { endpoint, root, .. } => format!("webdav {endpoint}{root}"),
        }
    }

    /// The storage behind the target.
    pub fn operator(&self) -> Result<Operator, BackupError> {
        // The HTTP transport S3 and WebDAV use (idempotent; this build registers no services
        // at start-up).
        opendal::install_default();
        let failed = |e: opendal::Error| BackupError::Unreachable(e.to_string());
        let op = match self {
            Target::Directory(path) => {
                std::fs::create_dir_all(path).map_err(|e| {
                    BackupError::Unreachable(format!("cannot create {}: {e}", path.display()))
                })?;
                let root = path.to_string_lossy();
                // Each object is written beside the repository and moved into place whole: a
                // backup cut off mid-write (a kill, a full disk) never leaves a partial object
                // under a name the next backup would take as written.
                let partial = path.join(".partial");
                Operator::new(
                    opendal::services::Fs::default()
                        .root(&root)
                        .atomic_write_dir(&partial.to_string_lossy()),
                )
                .map_err(failed)?
            }
            Target::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                credentials,
            } => {
                let mut builder = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(prefix)
                    .region(region.as_deref().unwrap_or("us-east-1"));
                if let Some(endpoint) = endpoint {
                    builder = builder.endpoint(endpoint);
                }
                let credentials = credentials.clone().or_else(|| {
                    Some((
                        std::env::var("AWS_ACCESS_KEY_ID").ok()?,
                        std::env::var("AWS_SECRET_ACCESS_KEY").ok()?,
                    ))
                });
                if let Some((id, secret)) = credentials {
                    builder = builder.access_key_id(&id).secret_access_key(&secret);
                }
                Operator::new(builder).map_err(failed)?
            }
            Target::Webdav {
                endpoint,
                root,
                user,
                password,
            } => {
                let mut builder = opendal::services::Webdav::default()
                    .endpoint(endpoint)
                    .root(root);
                let user = user
                    .clone()
                    .or_else(|| std::env::var("CHATSYNC_WEBDAV_USER").ok());
                let password = password
                    .clone()
                    .or_else(|| std::env::var("CHATSYNC_WEBDAV_PASSWORD").ok());
                if let Some(user) = &user {
                    builder = builder.username(user);
                }
                if let Some(password) = &password {
                    builder = builder.password(password);
                }
                Operator::new(builder).map_err(failed)?
            }
        };
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("backups", Some(std::path::Path::new("/home/a"))).unwrap(),
            Target::Directory("/home/a/backups".into())
        );
        assert_eq!(
            Target::parse("file:///mnt/usb", None).unwrap(),
            Target::Directory("/mnt/usb".into())
        );
        assert_eq!(
            Target::parse("s3://chats/phone?endpoint=http://127.0.0.1:9000", None).unwrap(),
            Target::S3 {
                bucket: "chats".into(),
                prefix: "/phone".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: None,
                credentials: None,
            }
        );
        assert_eq!(
            Target::parse("s3://AKID:s3cret@chats?region=eu-west-1", None).unwrap(),
            Target::S3 {
                bucket: "chats".into(),
                prefix: "/".into(),
                endpoint: None,
                region: Some("eu-west-1".into()),
                credentials: Some(("AKID".into(), "s3cret".into())),
            }
        );
        assert!(
            !Target::parse("s3://AKID:s3cret@chats", None)
                .unwrap()
                .display()
                .contains("s3cret")
        );
        assert_eq!(
            Target::parse("webdav+http://u:p@127.0.0.1:8080/dav/chats", None).unwrap(),
            Target::Webdav {
                endpoint: "http://127.0.0.1:8080".into(),
                root: "/dav/chats/".into(),
                user: Some("u".into()),
                password: Some("p".into()),
            }
        );
        for bad in ["", "s3://", "ftp://x/y", "s3://b/p?colour=red", "relative"] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
        assert!(
            !Target::parse("webdav+http://u:secret@h/p", None)
                .unwrap()
                .display()
                .contains("secret")
        );
    }
}

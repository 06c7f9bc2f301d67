//! Connection options as libpq reads them: a DSN (URL or `key=value`), then the `PG*`
//! environment for what the DSN leaves out, then the password file, then libpq's
//! defaults. Pure: the environment and the home directory are passed in, so the rules
//! are unit-tested without touching the process.
//!
//! Runs once, in [`PostgresPool::new`](super::PostgresPool::new), on the caller's
//! thread. Nothing here logs or formats a password.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `sslmode`, as libpq defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> anyhow::Result<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => anyhow::bail!(
                "invalid sslmode {other:?}: expected disable, allow, prefer, require, \
                 verify-ca or verify-full"
            ),
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain must verify, whatever files exist.
    pub(crate) fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// Where the server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCerts {
    /// No roots: the certificate is not verified (libpq's `prefer` and `require`
    /// without a root file).
    None,
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS half of the options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub(crate) mode: SslMode,
    pub(crate) roots: RootCerts,
    /// A client certificate chain and its key (`sslcert`, `sslkey`).
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
}

/// One server to try, in order, as libpq tries a host list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// A host name or address (TCP), or a socket directory (starts with `/`).
    pub(crate) host: String,
    /// `hostaddr`: connect here, but verify the certificate against `host`.
    pub(crate) hostaddr: Option<IpAddr>,
    pub(crate) port: u16,
    /// The password for this host: the DSN's, `PGPASSWORD`, or the password file's.
    pub(crate) password: Option<String>,
}

impl Target {
    pub(crate) fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `host:port`, or the socket's path, for messages.
    pub(crate) fn describe(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Everything a connection needs, resolved.
#[derive(Clone, Debug)]
pub(crate) struct ConnectOptions {
    pub(crate) targets: Vec<Target>,
    pub(crate) user: String,
    pub(crate) tls: TlsOptions,
    pub(crate) connect_timeout: Option<Duration>,
    /// The options tokio-postgres applies as they are (application_name, options,
    /// keepalives, target_session_attrs, channel_binding), with user and dbname set.
    pub(crate) base: tokio_postgres::Config,
}

/// What the process offers libpq: its environment and the home directory.
pub(crate) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn home(&self) -> Option<PathBuf>;
    fn user_name(&self) -> Option<String>;
    /// The directory of the server's Unix socket when no host is given.
    fn default_socket_dir(&self) -> String;
}

/// The real process.
pub(crate) struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME")
            .map(PathBuf::from)
            .or_else(|| passwd_entry().map(|(_, home)| home))
    }

    fn user_name(&self) -> Option<String> {
        passwd_entry()
            .map(|(name, _)| name)
            .or_else(|| self.var("USER"))
    }

    fn default_socket_dir(&self) -> String {
        // libpq's is fixed when it is built: /var/run/postgresql on Debian and its
        // derivatives, /tmp upstream. Use whichever this machine has.
        ["/var/run/postgresql", "/tmp"]
            .into_iter()
            .find(|dir| Path::new(dir).join(".s.PGSQL.5432").exists())
            .unwrap_or(if Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql"
            } else {
                "/tmp"
            })
            .to_owned()
    }
}

/// The effective user's name and home directory, from the password database.
fn passwd_entry() -> Option<(String, PathBuf)> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `passwd` is plain C data (integers and pointers): all-zero is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, which outlive the call, and sets
    // `result` to `&pwd` or null; the strings it points at live in `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated strings inside `buf` (see above).
    let (name, dir) = unsafe {
        (
            std::ffi::CStr::from_ptr(pwd.pw_name),
            std::ffi::CStr::from_ptr(pwd.pw_dir),
        )
    };
    Some((
        name.to_string_lossy().into_owned(),
        PathBuf::from(dir.to_string_lossy().into_owned()),
    ))
}

/// Keys, with the environment variable each falls back to.
const KEYS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("dbname", Some("PGDATABASE")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("application_name", Some("PGAPPNAME")),
    ("options", Some("PGOPTIONS")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_retries", None),
    ("tcp_user_timeout", None),
];

/// Resolves `dsn` the way libpq would in a process with `env`.
pub(crate) fn resolve(dsn: &str, env: &dyn Environment) -> anyhow::Result<ConnectOptions> {
    let given = parse_dsn(dsn)?;
    let mut values: Vec<(&'static str, Option<String>)> = Vec::new();
    for &(key, var) in KEYS {
        let from_dsn = given.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        let value = from_dsn
            .cloned()
            .filter(|v| !v.is_empty())
            .or_else(|| var.and_then(|var| env.var(var)));
        values.push((key, value));
    }
    if let Some((key, _)) = given
        .iter()
        .find(|(k, _)| !KEYS.iter().any(|(known, _)| known == k))
    {
        anyhow::bail!("invalid connection option {key:?}");
    }
    let get = |key: &str| -> Option<&str> {
        values
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_deref())
    };

    let user = match get("user") {
        Some(user) => user.to_owned(),
        None => env.user_name().ok_or_else(|| {
            anyhow::anyhow!("no user name given (user, PGUSER) and none found for this process")
        })?,
    };
    let dbname = get("dbname").unwrap_or(&user).to_owned();

    let mut base = tokio_postgres::Config::new();
    base.user(&user).dbname(&dbname);
    if let Some(name) = get("application_name") {
        base.application_name(name);
    }
    if let Some(options) = get("options") {
        base.options(options);
    }
    // The rest tokio-postgres validates itself, through its own parser.
    for key in [
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_retries",
        "tcp_user_timeout",
        "target_session_attrs",
        "channel_binding",
    ] {
        if let Some(value) = get(key) {
            let parsed: tokio_postgres::Config = format!("{key}='{}'", quote(value))
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid {key} {value:?}: {e}"))?;
            copy_option(key, &parsed, &mut base);
        }
    }

    let connect_timeout = match get("connect_timeout") {
        None => None,
        Some(value) => {
            let seconds: i64 = value.trim().parse().map_err(|_| {
                anyhow::anyhow!("invalid connect_timeout {value:?}: expected whole seconds")
            })?;
            // As libpq: zero or less waits forever, and less than 2 s means 2 s.
            (seconds > 0).then(|| Duration::from_secs(seconds.max(2) as u64))
        }
    };

    let tls = tls_options(
        get("sslmode"),
        get("sslrootcert"),
        get("sslcert"),
        get("sslkey"),
        env,
    )?;

    let hosts: Vec<String> = match get("host") {
        Some(list) => list.split(',').map(str::to_owned).collect(),
        None => vec![String::new()],
    };
    let hostaddrs: Vec<Option<IpAddr>> = match get("hostaddr") {
        None => vec![None],
        Some(list) => list
            .split(',')
            .map(|a| {
                (!a.is_empty())
                    .then(|| {
                        a.parse()
                            .map_err(|_| anyhow::anyhow!("invalid hostaddr {a:?}"))
                    })
                    .transpose()
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let ports: Vec<u16> = match get("port") {
        None => vec![5432],
        Some(list) => list
            .split(',')
            .map(|p| {
                if p.is_empty() {
                    Ok(5432)
                } else {
                    p.trim()
                        .parse()
                        .map_err(|_| anyhow::anyhow!("invalid port {p:?}"))
                }
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let count = hosts.len().max(hostaddrs.len());
    let fits = |n: usize| n == 1 || n == count;
    if !fits(hosts.len()) || !fits(hostaddrs.len()) || !fits(ports.len()) {
        anyhow::bail!(
            "{} hosts, {} hostaddrs and {} ports: each list must have one entry or as many as the others",
            hosts.len(),
            hostaddrs.len(),
            ports.len()
        );
    }
    let password = get("password").map(str::to_owned);
    let passfile = get("passfile")
        .map(PathBuf::from)
        .or_else(|| env.home().map(|h| h.join(".pgpass")));
    let default_socket_dir = env.default_socket_dir();
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let hostaddr = hostaddrs[pick(hostaddrs.len(), i)];
        let mut host = hosts[pick(hosts.len(), i)].clone();
        if host.is_empty() {
            host = match hostaddr {
                Some(addr) => addr.to_string(),
                None => default_socket_dir.clone(),
            };
        }
        let port = ports[pick(ports.len(), i)];
        let password = match &password {
            Some(password) => Some(password.clone()),
            None => match &passfile {
                Some(file) => {
                    // libpq matches "localhost" for the default socket directory.
                    let match_host = if host == default_socket_dir {
                        "localhost"
                    } else {
                        &host
                    };
                    password_from_file(file, match_host, port, &dbname, &user)?
                }
                None => None,
            },
        };
        targets.push(Target {
            host,
            hostaddr,
            port,
            password,
        });
    }
    Ok(ConnectOptions {
        targets,
        user,
        tls,
        connect_timeout,
        base,
    })
}

/// The entry of a list of one or of `count` for the `i`th host.
fn pick(len: usize, i: usize) -> usize {
    if len == 1 {
        0
    } else {
        i
    }
}

fn copy_option(key: &str, from: &tokio_postgres::Config, to: &mut tokio_postgres::Config) {
    match key {
        "keepalives" => {
            to.keepalives(from.get_keepalives());
        }
        "keepalives_idle" => {
            to.keepalives_idle(from.get_keepalives_idle());
        }
        "keepalives_interval" => {
            if let Some(d) = from.get_keepalives_interval() {
                to.keepalives_interval(d);
            }
        }
        "keepalives_retries" => {
            if let Some(n) = from.get_keepalives_retries() {
                to.keepalives_retries(n);
            }
        }
        "tcp_user_timeout" => {
            if let Some(d) = from.get_tcp_user_timeout() {
                to.tcp_user_timeout(*d);
            }
        }
        "target_session_attrs" => {
            to.target_session_attrs(from.get_target_session_attrs());
        }
        "channel_binding" => {
            to.channel_binding(from.get_channel_binding());
        }
        _ => {}
    }
}

fn tls_options(
    mode: Option<&str>,
    rootcert: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
    env: &dyn Environment,
) -> anyhow::Result<TlsOptions> {
    let system = rootcert == Some("system");
    let mode = match mode {
        Some(mode) => SslMode::parse(mode)?,
        // As libpq 16: the system's roots are only worth checking against in full.
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system && mode != SslMode::VerifyFull {
        anyhow::bail!(
            "weak sslmode {:?} may not be used with sslrootcert=system (use verify-full)",
            mode.name()
        );
    }
    let dot_postgresql = env.home().map(|h| h.join(".postgresql"));
    let roots = if system {
        RootCerts::System
    } else if mode == SslMode::Disable {
        RootCerts::None
    } else {
        match rootcert {
            Some(file) => {
                let file = PathBuf::from(file);
                if !file.is_file() {
                    anyhow::bail!("root certificate file {file:?} (sslrootcert) does not exist");
                }
                RootCerts::File(file)
            }
            None => {
                let default = dot_postgresql.as_ref().map(|d| d.join("root.crt"));
                match default {
                    // As libpq: a root file that exists is used in every mode.
                    Some(file) if file.is_file() => RootCerts::File(file),
                    default if mode.verifies() => anyhow::bail!(
                        "sslmode {} needs root certificates, and the root certificate file {} \
                         does not exist: set sslrootcert to a CA file, or to \"system\" for the \
                         system's trusted roots",
                        mode.name(),
                        default.map_or("~/.postgresql/root.crt".into(), |f| format!("{f:?}")),
                    ),
                    _ => RootCerts::None,
                }
            }
        }
    };
    let client_cert = if mode == SslMode::Disable {
        None
    } else {
        let explicit = cert.is_some();
        let cert = cert
            .map(PathBuf::from)
            .or_else(|| dot_postgresql.as_ref().map(|d| d.join("postgresql.crt")));
        let key = key
            .map(PathBuf::from)
            .or_else(|| dot_postgresql.as_ref().map(|d| d.join("postgresql.key")));
        match (cert, key) {
            (Some(cert), Some(key)) if cert.is_file() => Some((cert, key)),
            (Some(cert), _) if explicit => {
                anyhow::bail!("client certificate file {cert:?} (sslcert) does not exist")
            }
            _ => None,
        }
    };
    Ok(TlsOptions {
        mode,
        roots,
        client_cert,
    })
}

/// The password file's password for this connection, if a line matches. As libpq, a
/// file that others may read is ignored, with a warning.
fn password_from_file(
    file: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> anyhow::Result<Option<String>> {
    let metadata = match std::fs::metadata(file) {
        Ok(metadata) if metadata.is_file() => metadata,
        _ => return Ok(None),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "password file {file:?} has group or world access; permissions should be \
                 u=rw (0600) or less: not using it"
            );
            return Ok(None);
        }
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read the password file {file:?}: {e}"))?;
    let port = port.to_string();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            // The password is the rest of the line: it may contain unescaped colons
            // only as part of the fifth field, as libpq reads it.
            return Ok(Some(fields[4..].join(":")));
        }
    }
    Ok(None)
}

/// Fields separated by `:`, with `\` escaping the next character.
fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(f) = fields.last_mut() {
                        f.push(next);
                    }
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// The DSN's `(key, value)` pairs, in order, from a URL or a `key=value` string.
pub(crate) fn parse_dsn(dsn: &str) -> anyhow::Result<Vec<(String, String)>> {
    let trimmed = dsn.trim();
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = trimmed.strip_prefix(scheme) {
            return parse_url(rest);
        }
    }
    parse_key_values(trimmed)
}

fn parse_key_values(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            anyhow::bail!(
                "invalid connection string: missing \"=\" after {key:?} \
                 (expected key=value pairs or a postgresql:// URL)"
            );
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => anyhow::bail!("unterminated quoted value for {key:?}"),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => anyhow::bail!("unterminated quoted value for {key:?}"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// `[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`, after the scheme.
fn parse_url(rest: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    let hosts = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".to_owned(), percent_decode(user)?));
            }
            if let Some(password) = password {
                pairs.push(("password".to_owned(), percent_decode(password)?));
            }
            &authority[at + 1..]
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let mut host_list = Vec::new();
        let mut port_list = Vec::new();
        for spec in hosts.split(',') {
            let (host, port) = if let Some(inner) = spec.strip_prefix('[') {
                let end = inner
                    .find(']')
                    .ok_or_else(|| anyhow::anyhow!("invalid URL: unterminated [ in {spec:?}"))?;
                let port = inner[end + 1..].strip_prefix(':').unwrap_or("");
                (&inner[..end], port)
            } else {
                match spec.rsplit_once(':') {
                    Some((host, port)) => (host, port),
                    None => (spec, ""),
                }
            };
            host_list.push(percent_decode(host)?);
            port_list.push(port.to_owned());
        }
        if host_list.iter().any(|h| !h.is_empty()) {
            pairs.push(("host".to_owned(), host_list.join(",")));
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".to_owned(), port_list.join(",")));
        }
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".to_owned(), percent_decode(path)?));
    }
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param.is_empty() {
            continue;
        }
        let (key, value) = param.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid URL parameter {param:?}: expected key=value")
        })?;
        pairs.push((percent_decode(key)?, percent_decode(value)?));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| anyhow::anyhow!("invalid percent-encoding in the URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("the URL decodes to invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv {
        vars: HashMap<&'static str, String>,
        home: Option<PathBuf>,
    }

    impl FakeEnv {
        fn new(vars: &[(&'static str, &str)]) -> Self {
            Self {
                vars: vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
                home: None,
            }
        }
    }

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn home(&self) -> Option<PathBuf> {
            self.home.clone()
        }
        fn user_name(&self) -> Option<String> {
            Some("osuser".into())
        }
        fn default_socket_dir(&self) -> String {
            "/var/run/postgresql".into()
        }
    }

    fn pairs(dsn: &str) -> Vec<(String, String)> {
        parse_dsn(dsn).unwrap()
    }

    fn kv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn urls_and_key_values_parse_alike() {
        assert_eq!(
            pairs("postgresql://syn%40apse:p%3Ass@db.example:6432/main?sslmode=verify-full&application_name=x"),
            kv(&[
                ("user", "syn@apse"),
                ("password", "p:ss"),
                ("host", "db.example"),
                ("port", "6432"),
                ("dbname", "main"),
                ("sslmode", "verify-full"),
                ("application_name", "x"),
            ])
        );
        assert_eq!(
            pairs("host=db.example port = 6432  dbname=main"),
            kv(&[("host", "db.example"), ("port", "6432"), ("dbname", "main")])
        );
        assert_eq!(
            pairs(r"password='it\'s a \\ secret' host=/tmp/sock"),
            kv(&[("password", r"it's a \ secret"), ("host", "/tmp/sock")])
        );
        assert_eq!(
            pairs("postgres://[::1]:5433,h2/db"),
            kv(&[("host", "::1,h2"), ("port", "5433,"), ("dbname", "db")])
        );
        assert_eq!(
            pairs("postgresql://%2Fvar%2Frun%2Fpostgresql/db"),
            kv(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(pairs("postgresql://"), kv(&[]));
        assert!(parse_dsn("host")
            .unwrap_err()
            .to_string()
            .contains("missing \"=\""));
        assert!(parse_dsn("password='open").is_err());
    }

    #[test]
    fn the_environment_fills_what_the_dsn_leaves_out() {
        let env = FakeEnv::new(&[
            ("PGHOST", "/srv/pg"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "disable"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGPASSWORD", "envpw"),
        ]);
        let options = resolve("", &env).unwrap();
        assert_eq!(
            options.targets,
            vec![Target {
                host: "/srv/pg".into(),
                hostaddr: None,
                port: 6543,
                password: Some("envpw".into())
            }]
        );
        assert_eq!(
            (options.user.as_str(), options.base.get_dbname()),
            ("envuser", Some("envdb"))
        );
        assert_eq!(options.tls.mode, SslMode::Disable);
        // libpq's floor of 2 seconds.
        assert_eq!(options.connect_timeout, Some(Duration::from_secs(2)));

        // The DSN wins over the environment.
        let options = resolve("postgresql://u@h:1/d?sslmode=require", &env).unwrap();
        assert_eq!(options.targets[0].host, "h");
        assert_eq!(options.targets[0].port, 1);
        assert_eq!(options.user, "u");
        assert_eq!(options.tls.mode, SslMode::Require);
    }

    #[test]
    fn libpq_defaults_apply_when_nothing_is_given() {
        let options = resolve("", &FakeEnv::new(&[])).unwrap();
        assert_eq!(options.targets[0].host, "/var/run/postgresql");
        assert_eq!(options.targets[0].port, 5432);
        assert_eq!(options.targets[0].password, None);
        assert_eq!(options.user, "osuser");
        assert_eq!(options.base.get_dbname(), Some("osuser"));
        assert_eq!(options.tls.mode, SslMode::Prefer);
        assert_eq!(options.tls.roots, RootCerts::None);
        assert_eq!(options.connect_timeout, None);
    }

    #[test]
    fn host_lists_pair_with_ports_and_addresses() {
        let env = FakeEnv::new(&[]);
        let options = resolve("host=a,b port=1,2 hostaddr=10.0.0.1,10.0.0.2", &env).unwrap();
        let got: Vec<_> = options
            .targets
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.hostaddr.map(|a| a.to_string())))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 1, Some("10.0.0.1".into())),
                ("b", 2, Some("10.0.0.2".into()))
            ]
        );
        let err = resolve("host=a,b,c port=1,2", &env).unwrap_err();
        assert!(err.to_string().contains("3 hosts"), "{err}");
        // hostaddr alone: the address is the host too.
        let options = resolve("hostaddr=127.0.0.1", &env).unwrap();
        assert_eq!(options.targets[0].host, "127.0.0.1");
    }

    #[test]
    fn bad_values_are_named() {
        let env = FakeEnv::new(&[]);
        for (dsn, needle) in [
            ("sslmode=sometimes", "invalid sslmode"),
            ("port=http", "invalid port"),
            ("connect_timeout=soon", "invalid connect_timeout"),
            ("frobnicate=1", "invalid connection option \"frobnicate\""),
            ("hostaddr=nowhere", "invalid hostaddr"),
            (
                "target_session_attrs=whatever",
                "invalid target_session_attrs",
            ),
            ("sslrootcert=system sslmode=require", "weak sslmode"),
            ("sslmode=verify-full", "needs root certificates"),
            (
                "sslmode=require sslrootcert=/nonexistent/ca.pem",
                "does not exist",
            ),
        ] {
            let err = resolve(dsn, &env).unwrap_err().to_string();
            assert!(err.contains(needle), "{dsn}: {err}");
        }
        assert_eq!(
            resolve("sslrootcert=system", &env).unwrap().tls,
            TlsOptions {
                mode: SslMode::VerifyFull,
                roots: RootCerts::System,
                client_cert: None
            }
        );
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pyo3-twisted-libpq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_private(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_password_file_matches_like_libpq() {
        let home = temp_dir("pgpass");
        write_private(
            &home.join(".pgpass"),
            "# comment\n\
             other:5432:*:u:wrong\n\
             db.example:5432:main:u:right\\:one\n\
             localhost:*:*:*:socket\n\
             /srv/pg:5432:*:*:custom-dir\n\
             *:*:*:star:a:b\n",
            0o600,
        );
        let mut env = FakeEnv::new(&[]);
        env.home = Some(home.clone());
        let password =
            |env: &FakeEnv, dsn: &str| resolve(dsn, env).unwrap().targets[0].password.clone();
        assert_eq!(
            password(&env, "host=db.example dbname=main user=u").as_deref(),
            Some("right:one")
        );
        assert_eq!(password(&env, "host=db.example dbname=other user=u"), None);
        // The default socket directory matches "localhost"; another matches its path.
        assert_eq!(password(&env, "user=u").as_deref(), Some("socket"));
        assert_eq!(
            password(&env, "host=/srv/pg user=u").as_deref(),
            Some("custom-dir")
        );
        // An unescaped colon in the password field is part of the password.
        assert_eq!(password(&env, "host=x user=star").as_deref(), Some("a:b"));
        // The DSN's password wins.
        assert_eq!(
            password(&env, "host=db.example dbname=main user=u password=given").as_deref(),
            Some("given")
        );
        // PGPASSFILE points elsewhere.
        let elsewhere = home.join("elsewhere");
        write_private(&elsewhere, "*:*:*:*:from-passfile\n", 0o600);
        env.vars
            .insert("PGPASSFILE", elsewhere.display().to_string());
        assert_eq!(
            password(&env, "host=q user=u").as_deref(),
            Some("from-passfile")
        );
        // A file others may read is ignored.
        write_private(&elsewhere, "*:*:*:*:from-passfile\n", 0o644);
        assert_eq!(password(&env, "host=q user=u"), None);
        let _ = std::fs::remove_dir_all(home);
    }

    #[test]
    fn a_root_file_in_the_home_is_used_and_client_certs_are_found() {
        let home = temp_dir("certs");
        let dot = home.join(".postgresql");
        std::fs::create_dir_all(&dot).unwrap();
        let mut env = FakeEnv::new(&[]);
        env.home = Some(home.clone());
        assert_eq!(resolve("", &env).unwrap().tls.roots, RootCerts::None);
        std::fs::write(dot.join("root.crt"), "").unwrap();
        std::fs::write(dot.join("postgresql.crt"), "").unwrap();
        let tls = resolve("sslmode=verify-ca", &env).unwrap().tls;
        assert_eq!(tls.roots, RootCerts::File(dot.join("root.crt")));
        assert_eq!(
            tls.client_cert,
            Some((dot.join("postgresql.crt"), dot.join("postgresql.key")))
        );
        assert_eq!(
            resolve("sslmode=disable", &env).unwrap().tls.client_cert,
            None
        );
        let err = resolve("sslcert=/nonexistent.crt", &env).unwrap_err();
        assert!(err.to_string().contains("sslcert"), "{err}");
        let _ = std::fs::remove_dir_all(home);
    }
}

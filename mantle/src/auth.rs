//! Access tokens: who may call the server, and which user it may act as.
//!
//! Without a token file (`mantle serve` without `--tokens`) the server is open, as it always
//! was: a client's credentials are its word, and administrative calls are accepted from the
//! server's own host only. It says so in its log.
//!
//! With `--tokens FILE`, every call carries `authorization: Bearer SECRET`, and the secret's
//! entry decides what the call may do:
//!
//! | role | acts as | administrative calls |
//! | --- | --- | --- |
//! | `admin` | any user it claims | yes (fsck, node changes), from any host |
//! | `node` | (cluster peers: Raft messages, joining) | node changes only |
//! | `trusted` | any user it claims (a FUSE mount, a gateway); `squash` turns uid 0 into 65534 | no |
//! | `app` | the one user of its entry (`uid=`, `gid=`, `groups=`), whatever it claims | no |
//!
//! A call without a token, or with one the file does not list, is refused with
//! `UNAUTHENTICATED` before anything runs. Every node of a cluster must have the same file;
//! nodes present the file's first `node` secret to each other.
//!
//! The file: one entry per line, `NAME ROLE SECRET [uid=N] [gid=N] [groups=N,N..] [squash]`;
//! `#` starts a comment. Secrets are at least 16 characters; the file should be readable by
//! its owner only (the server warns otherwise).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use indexnode::Cred;
use tonic::Status;

/// The metadata key that carries a token.
pub const AUTHORIZATION: &str = "authorization";

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Any user; administrative calls.
    Admin,
    /// A cluster peer: Raft messages and node changes.
    Node,
    /// Any user it claims; with `squash`, uid 0 becomes 65534.
    Trusted {
        /// Root squash.
        squash: bool,
    },
    /// Exactly this user.
    App(Cred),
}

/// One entry of the token file.
#[derive(Clone, Debug)]
pub struct Token {
    /// A name for logs (never the secret).
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// The token file, parsed.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_secret: HashMap<String, Arc<Token>>,
    /// The secret this node presents to its peers.
    node_secret: Option<String>,
}

/// The user nobody (root squash).
const NOBODY: u32 = 65534;

impl Tokens {
    /// Reads and checks `path`; errors name the line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                if m.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        "the token file is readable by other users than its owner (chmod 600 it)"
                    );
                }
            }
        }
        Tokens::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    /// Parses the text of a token file.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut t = Tokens::default();
        let mut names = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(role), Some(secret)) = (words.next(), words.next(), words.next())
            else {
                return Err(format!("line {n}: expected NAME ROLE SECRET [options]"));
            };
            if secret.len() < 16 {
                return Err(format!(
                    "line {n}: the secret of {name:?} is shorter than 16 characters"
                ));
            }
            if !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "line {n}: the secret of {name:?} must be printable ASCII"
                ));
            }
            let (mut uid, mut gid, mut groups, mut squash) = (None, None, Vec::new(), false);
            for w in words {
                let num = |v: &str| {
                    v.parse::<u32>()
                        .map_err(|_| format!("line {n}: {w:?}: not a number"))
                };
                match w.split_once('=') {
                    Some(("uid", v)) => uid = Some(num(v)?),
                    Some(("gid", v)) => gid = Some(num(v)?),
                    Some(("groups", v)) => {
                        groups = v
                            .split(',')
                            .filter(|g| !g.is_empty())
                            .map(num)
                            .collect::<Result<_, _>>()?
                    }
                    None if w == "squash" => squash = true,
                    _ => return Err(format!("line {n}: unknown option {w:?}")),
                }
            }
            let pinned = uid.is_some() || gid.is_some() || !groups.is_empty();
            let role = match role {
                "admin" | "node" | "trusted" if pinned => {
                    return Err(format!(
                        "line {n}: uid=/gid=/groups= only apply to the app role"
                    ))
                }
                "admin" | "node" | "app" if squash => {
                    return Err(format!("line {n}: squash only applies to the trusted role"))
                }
                "admin" => Role::Admin,
                "node" => Role::Node,
                "trusted" => Role::Trusted { squash },
                "app" => match (uid, gid) {
                    (Some(uid), Some(gid)) => Role::App(Cred { uid, gid, groups }),
                    _ => return Err(format!("line {n}: an app token needs uid= and gid=")),
                },
                other => {
                    return Err(format!(
                        "line {n}: unknown role {other:?} (admin, node, trusted, app)"
                    ))
                }
            };
            if !names.insert(name.to_string()) {
                return Err(format!("line {n}: a second entry named {name:?}"));
            }
            if role == Role::Node && t.node_secret.is_none() {
                t.node_secret = Some(secret.to_string());
            }
            let token = Arc::new(Token {
                name: name.to_string(),
                role,
            });
            if t.by_secret.insert(secret.to_string(), token).is_some() {
                return Err(format!("line {n}: the secret of {name:?} is used twice"));
            }
        }
        if t.by_secret.is_empty() {
            return Err("no tokens (an empty file would lock every client out)".into());
        }
        Ok(t)
    }

    /// The secret this node presents to its peers (the first `node` entry).
    pub fn node_secret(&self) -> Option<&str> {
        self.node_secret.as_deref()
    }

    /// The entry of the secret in `authorization` (`Bearer SECRET`).
    fn lookup(&self, header: Option<&http::HeaderValue>) -> Option<Arc<Token>> {
        let v = header?.to_str().ok()?;
        let secret = v.strip_prefix("Bearer ")?.trim();
        // The map hashes with a per-process random key (SipHash), so a guess's timing says
        // nothing useful about which bytes of a secret it got right.
        self.by_secret.get(secret).cloned()
    }
}

/// The `authorization` value that presents `secret`.
pub fn bearer(secret: &str) -> String {
    format!("Bearer {}", secret.trim())
}

/// Who is calling, as the server's handlers see it.
#[derive(Clone, Debug, Default)]
pub enum Principal {
    /// No token file: the caller's credentials are its word.
    #[default]
    Open,
    /// A listed token.
    Token(Arc<Token>),
}

impl Principal {
    /// The principal of a request (put there by [`AuthLayer`]).
    pub fn of<T>(r: &tonic::Request<T>) -> Principal {
        r.extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or_default()
    }

    /// The user a call claiming `claimed` acts as.
    pub fn cred(&self, claimed: Cred) -> Cred {
        match self {
            Principal::Token(t) => match &t.role {
                Role::App(c) => c.clone(),
                Role::Trusted { squash: true } if claimed.uid == 0 => Cred {
                    uid: NOBODY,
                    gid: NOBODY,
                    groups: Vec::new(),
                },
                _ => claimed,
            },
            Principal::Open => claimed,
        }
    }

    /// Whether tokens are in force (then the caller's host does not matter).
    pub fn is_token(&self) -> bool {
        matches!(self, Principal::Token(_))
    }

    /// Whether it may make administrative calls: with tokens, an admin token; without,
    /// `local_root` decides (the call comes from the server's host and claims root).
    pub fn may_administer(&self, local_root: bool) -> bool {
        match self {
            Principal::Token(t) => t.role == Role::Admin,
            Principal::Open => local_root,
        }
    }

    /// Whether it may change the cluster's membership (admin or node tokens).
    pub fn may_change_nodes(&self, local: bool) -> bool {
        match self {
            Principal::Token(t) => matches!(t.role, Role::Admin | Role::Node),
            Principal::Open => local,
        }
    }
}

use crate::layer::Body;

/// Refuses calls without a listed token, and records the caller's [`Principal`] for the
/// handlers. Raft messages need a `node` token.
#[derive(Clone)]
pub(crate) struct AuthLayer {
    pub(crate) tokens: Arc<Tokens>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

impl<S> tower::Service<http::Request<Body>> for Auth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = crate::layer::BoxResponse<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let token = self.tokens.lookup(req.headers().get(AUTHORIZATION));
        let refused = match &token {
            None => Some("a valid access token is needed (authorization: Bearer SECRET)"),
            Some(t) if req.uri().path().starts_with("/tafdb.raft.") && t.role != Role::Node => {
                Some("Raft messages need a node token")
            }
            Some(_) => None,
        };
        if let Some(why) = refused {
            tracing::debug!(path = %req.uri().path(), why, "call refused");
            let status = Status::unauthenticated(why);
            return Box::pin(async move { Ok(status.into_http()) });
        }
        if let Some(t) = token {
            req.extensions_mut().insert(Principal::Token(t));
        }
        Box::pin(crate::layer::take_ready(&mut self.inner).call(req))
    }
}

/// A channel that presents a token with every call (the SDK's and the CLI's, and a node's to
/// its peers).
#[derive(Clone, Debug)]
pub struct Authed {
    inner: tonic::transport::Channel,
    token: Option<http::HeaderValue>,
}

impl Authed {
    /// `inner`, presenting `secret` if given.
    pub fn new(inner: tonic::transport::Channel, secret: Option<&str>) -> Result<Authed, String> {
        let token = secret
            .map(|s| {
                http::HeaderValue::from_str(&bearer(s))
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                    .map_err(|_| "a token must be printable ASCII".to_string())
            })
            .transpose()?;
        Ok(Authed { inner, token })
    }
}

impl tower::Service<http::Request<Body>> for Authed {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <tonic::transport::Channel as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(t) = &self.token {
            req.headers_mut().insert(AUTHORIZATION, t.clone());
        }
        self.inner.call(req)
    }
}

/// Reads a token for the CLI: the file's first line, trimmed.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(format!("token file {}: empty", path.display()));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# name role secret options
ops     admin   0123456789abcdef-admin
peer    node    0123456789abcdef-node
fuse    trusted 0123456789abcdef-fuse squash
etl     app     0123456789abcdef-etl uid=1000 gid=100 groups=100,200
";

    fn bearer(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {s}")).expect("header")
    }

    #[test]
    fn a_token_file_maps_secrets_to_roles() {
        let t = Tokens::parse(FILE).expect("parse");
        assert_eq!(t.node_secret(), Some("0123456789abcdef-node"));
        let etl = t
            .lookup(Some(&bearer("0123456789abcdef-etl")))
            .expect("etl");
        let p = Principal::Token(etl);
        let as_root = p.cred(Cred::root());
        assert_eq!(
            (as_root.uid, as_root.gid, as_root.groups),
            (1000, 100, vec![100, 200])
        );
        assert!(!p.may_administer(true));
        let fuse = Principal::Token(
            t.lookup(Some(&bearer("0123456789abcdef-fuse")))
                .expect("fuse"),
        );
        assert_eq!(fuse.cred(Cred::root()).uid, NOBODY);
        let user = Cred {
            uid: 7,
            gid: 7,
            groups: vec![],
        };
        assert_eq!(fuse.cred(user.clone()).uid, 7);
        let ops = Principal::Token(
            t.lookup(Some(&bearer("0123456789abcdef-admin")))
                .expect("ops"),
        );
        assert!(ops.may_administer(false) && ops.may_change_nodes(false));
        assert_eq!(ops.cred(user).uid, 7);
        assert!(t.lookup(Some(&bearer("0123456789abcdef-nope"))).is_none());
        assert!(t.lookup(Some(&bearer("0123456789abcdef-admi"))).is_none());
        assert!(t.lookup(None).is_none());
        assert!(t
            .lookup(Some(&http::HeaderValue::from_static(
                "0123456789abcdef-admin"
            )))
            .is_none());
        assert!(Principal::Open.may_administer(true) && !Principal::Open.may_administer(false));
    }

    #[test]
    fn bad_token_files_are_refused_with_their_line() {
        for (text, why) in [
            ("", "no tokens"),
            ("a admin short", "line 1: the secret of \"a\" is shorter"),
            ("a boss 0123456789abcdef-x", "unknown role"),
            ("a app 0123456789abcdef-x uid=1", "needs uid= and gid="),
            (
                "a admin 0123456789abcdef-x uid=1",
                "only apply to the app role",
            ),
            (
                "a app 0123456789abcdef-x uid=1 gid=1 squash",
                "squash only applies",
            ),
            ("a app 0123456789abcdef-x uid=x gid=1", "not a number"),
            ("a admin 0123456789abcdef-x color=red", "unknown option"),
            (
                "a admin 0123456789abcdef-x\nb node 0123456789abcdef-x",
                "line 2: the secret of \"b\" is used twice",
            ),
            (
                "a admin 0123456789abcdef-x\na node 0123456789abcdef-y",
                "line 2: a second entry",
            ),
            ("a admin", "expected NAME ROLE SECRET"),
        ] {
            let e = Tokens::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}

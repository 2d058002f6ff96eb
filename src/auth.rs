//! Bearer-token authentication (`auth`, `metrics.auth`): a request must carry one of the
//! tokens of `bearer_tokens_file` in its `header`, after its `scheme`.
//!
//! The file is reread when it changes (its length or modification time, looked at no
//! more than once a second, on a request), so tokens rotate without a restart; a file
//! that cannot be read, or holds no token, keeps the tokens in force, and is logged.
//! Tokens are compared in time that does not depend on where they differ.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};

use crate::config::Auth;

/// How often the tokens file is looked at for a change, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// The tokens of a file, one per line; blank lines and lines starting with `#` are
/// skipped, and spaces around a token are not part of it.
pub fn read_tokens(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect())
}

/// The tokens in force for one `auth` section.
#[derive(Debug)]
pub struct BearerTokens {
    file: PathBuf,
    header: HeaderName,
    scheme: String,
    state: RwLock<Loaded>,
    /// Unix milliseconds of the last look at the file.
    checked_ms: AtomicU64,
}

#[derive(Debug)]
struct Loaded {
    /// The file's length and modification time when read.
    stamp: Option<(u64, SystemTime)>,
    tokens: Arc<HashSet<Vec<u8>>>,
}

impl BearerTokens {
    /// Reads the tokens of `auth`. A file that cannot be read now (it was readable when
    /// the configuration was checked) is logged, and no token is in force until it can:
    /// every request is refused rather than let through.
    pub fn new(auth: &Auth) -> Self {
        let header =
            HeaderName::from_bytes(auth.header.as_bytes()).unwrap_or(http::header::AUTHORIZATION);
        let stamp = stamp(&auth.bearer_tokens_file);
        let tokens = read_tokens(&auth.bearer_tokens_file).unwrap_or_else(|e| {
            tracing::error!(
                file = %auth.bearer_tokens_file.display(),
                "cannot read the bearer tokens file ({e}); every request is refused until it can be read"
            );
            Vec::new()
        });
        Self {
            file: auth.bearer_tokens_file.clone(),
            header,
            scheme: auth.scheme.clone(),
            state: RwLock::new(Loaded {
                stamp,
                tokens: Arc::new(tokens.into_iter().collect()),
            }),
            checked_ms: AtomicU64::new(now_ms()),
        }
    }

    /// True when `headers` carry a token in force.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        self.refresh();
        let Some(token) = headers
            .get(&self.header)
            .and_then(|v| self.token_of(v.as_bytes()))
        else {
            return false;
        };
        self.in_force(token)
    }

    /// Whether `token` is one of the tokens in force. Every token is compared, each in
    /// time independent of where it differs.
    fn in_force(&self, token: &[u8]) -> bool {
        let tokens = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tokens
            .clone();
        tokens
            .iter()
            .fold(false, |found, t| found | constant_time_eq(t, token))
    }

    /// True when `headers` carry a token in force, as [`BearerTokens::allows`] reads it,
    /// or, when [`BearerTokens::takes_basic`], as the password of HTTP Basic
    /// authentication (`Authorization: Basic`, any user name): what a browser sends once
    /// it has prompted for them. Browsers cannot send a bearer token by themselves, so
    /// the status pages take this too.
    pub fn allows_browser(&self, headers: &HeaderMap) -> bool {
        if self.allows(headers) {
            return true;
        }
        if !self.takes_basic() {
            return false;
        }
        // The first `Authorization` only, as `allows` reads it.
        let Some(decoded) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| basic_credentials(v.as_bytes()))
        else {
            return false;
        };
        // RFC 7617: the user name ends at the first colon; the password may hold more.
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return false;
        };
        let password = &decoded[colon + 1..];
        !password.is_empty() && self.in_force(password)
    }

    /// Whether a token may come as an HTTP Basic password ([`BearerTokens::allows_browser`]):
    /// only when the tokens go in `Authorization`, and under a scheme other than `Basic`
    /// itself. Tokens in a header of their own (an API-key header) stay there, and so
    /// does a front proxy's use of `Authorization`.
    pub fn takes_basic(&self) -> bool {
        self.header == http::header::AUTHORIZATION && !self.scheme.eq_ignore_ascii_case("basic")
    }

    /// The `WWW-Authenticate` value of a 401: the configured scheme when the tokens
    /// go in `Authorization`. A custom header (an API-key header, say) has no
    /// challenge to name, so none is sent.
    pub fn challenge(&self) -> Option<http::HeaderValue> {
        if self.header != http::header::AUTHORIZATION || self.scheme.is_empty() {
            return None;
        }
        http::HeaderValue::from_str(&self.scheme).ok()
    }

    /// The token of a header value: what follows the scheme and one or more spaces,
    /// or the whole value without a scheme.
    fn token_of<'v>(&self, value: &'v [u8]) -> Option<&'v [u8]> {
        if self.scheme.is_empty() {
            return Some(value.trim_ascii()).filter(|t| !t.is_empty());
        }
        let scheme = self.scheme.as_bytes();
        if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return None;
        }
        let rest = &value[scheme.len()..];
        if !rest.starts_with(b" ") {
            return None;
        }
        Some(rest.trim_ascii()).filter(|t| !t.is_empty())
    }

    /// Rereads the file if it changed, at most once per [`RECHECK`].
    fn refresh(&self) {
        let now = now_ms();
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < RECHECK.as_millis() as u64
            || self
                .checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let current = stamp(&self.file);
        let unchanged = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stamp
            == current;
        if unchanged {
            return;
        }
        match read_tokens(&self.file) {
            Ok(tokens) if !tokens.is_empty() => {
                let count = tokens.len();
                let mut state = self
                    .state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.stamp = current;
                state.tokens = Arc::new(tokens.into_iter().collect());
                tracing::info!(file = %self.file.display(), tokens = count, "bearer tokens reread");
            }
            Ok(_) => tracing::error!(
                file = %self.file.display(),
                "the bearer tokens file holds no token now; the tokens read before stay in force"
            ),
            Err(e) => tracing::error!(
                file = %self.file.display(),
                "cannot reread the bearer tokens file ({e}); the tokens read before stay in force"
            ),
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The decoded `user:password` of an `Authorization: Basic <base64>` value.
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(5)?;
    if !scheme.eq_ignore_ascii_case(b"basic") || !rest.starts_with(b" ") {
        return None;
    }
    base64_decode(rest.trim_ascii())
}

/// Standard base64 (RFC 4648, section 4) in its canonical form: padded to a multiple of
/// 4 with `=`, or without padding at all, and with the bits past the last whole byte
/// zero (section 3.5). `None` for anything else (another alphabet, misplaced or wrong
/// padding, non-zero leftover bits).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let unpadded = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let pad = text.len() - unpadded.len();
    let tail = unpadded.len() % 4;
    if tail == 1 || (pad > 0 && tail + pad != 4) {
        return None;
    }
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    for chunk in unpadded.chunks(4) {
        let mut bits = 0u32;
        for &c in chunk {
            bits = bits << 6 | sextet(c)?;
        }
        // A chunk of n sextets holds n - 1 whole bytes; the bits left over must be zero.
        let bytes = chunk.len() - 1;
        let leftover = 6 * chunk.len() - 8 * bytes;
        if bits & ((1 << leftover) - 1) != 0 {
            return None;
        }
        bits <<= 6 * (4 - chunk.len());
        out.extend_from_slice(&bits.to_be_bytes()[1..1 + bytes]);
    }
    Some(out)
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &Path, tokens: &str, header: &str, scheme: &str) -> Auth {
        let file = dir.join("tokens");
        std::fs::write(&file, tokens).unwrap();
        Auth {
            bearer_tokens_file: file,
            header: header.to_owned(),
            scheme: scheme.to_owned(),
        }
    }

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    #[test]
    fn tokens_are_matched_after_their_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = BearerTokens::new(&auth(
            dir.path(),
            "# comment\n\n  s3cret  \nother\n",
            "Authorization",
            "Bearer",
        ));
        assert!(tokens.allows(&with("authorization", "Bearer s3cret")));
        assert!(tokens.allows(&with("Authorization", "bearer  other")));
        for (name, value) in [
            ("authorization", "Bearer wrong"),
            ("authorization", "Bearer s3cre"),
            ("authorization", "Bearer"),
            ("authorization", "Bearer "),
            ("authorization", "Basic s3cret"),
            ("authorization", "Bearers3cret"),
            ("authorization", "s3cret"),
            ("x-token", "Bearer s3cret"),
            ("authorization", "Bearer # comment"),
        ] {
            assert!(!tokens.allows(&with(name, value)), "{name}: {value}");
        }
        assert!(!tokens.allows(&HeaderMap::new()));
    }

    #[test]
    fn base64_decodes_the_rfc_vectors_and_refuses_anything_else() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_decode(encoded.as_bytes()).unwrap(), plain.as_bytes());
            let unpadded = encoded.trim_end_matches('=');
            assert_eq!(
                base64_decode(unpadded.as_bytes()).unwrap(),
                plain.as_bytes()
            );
        }
        assert_eq!(base64_decode(b"/+//").unwrap(), [0xff, 0xef, 0xff]);
        for bad in [
            "Zm9v!",
            "Zm=v",
            "Z",
            "Zm9vY",
            "Zm9v Zg==",
            "Zg===",
            "Zm9-",
            "Zm9_",
            "Zm9v!!!!",
            // Wrong or misplaced padding, and non-zero bits past the last byte.
            "Zm9v==",
            "Zm9v=",
            "Zg=",
            "Zm9vYg=",
            "=",
            "==",
            "Zh==",
            "Zm9=",
        ] {
            assert_eq!(base64_decode(bad.as_bytes()), None, "{bad}");
        }
    }

    /// What a browser sends after its prompt: any user name, a token as the password.
    /// Only [`BearerTokens::allows_browser`] takes it.
    #[test]
    fn a_browser_may_send_a_token_as_its_basic_password() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = BearerTokens::new(&auth(
            dir.path(),
            "s3cret\nwith:colon\n",
            "Authorization",
            "Bearer",
        ));
        let basic = |credentials: &str| {
            let encoded = encode(credentials.as_bytes());
            with("authorization", &format!("Basic {encoded}"))
        };
        for allowed in ["anyone:s3cret", ":s3cret", "me:with:colon"] {
            assert!(tokens.allows_browser(&basic(allowed)), "{allowed}");
            assert!(!tokens.allows(&basic(allowed)), "{allowed}");
        }
        assert!(tokens.allows_browser(&with("authorization", "basic OnMzY3JldA==")));
        assert!(tokens.allows_browser(&with("authorization", "Bearer s3cret")));
        for refused in [
            "s3cret:",
            "s3cret",
            "me:wrong",
            "me:s3cre",
            "me:",
            "with:colon",
        ] {
            assert!(!tokens.allows_browser(&basic(refused)), "{refused}");
        }
        assert!(!tokens.allows_browser(&with("authorization", "Basic not base64!")));
        assert!(!tokens.allows_browser(&with("authorization", "BasicOnMzY3JldA==")));
        assert!(!tokens.allows_browser(&HeaderMap::new()));
    }

    /// A token as a Basic password only where the tokens go in `Authorization` under a
    /// scheme other than `Basic`; the first `Authorization` header only.
    #[test]
    fn basic_passwords_only_where_tokens_go_in_authorization() {
        let dir = tempfile::tempdir().unwrap();
        let basic = with("authorization", &format!("Basic {}", encode(b"me:k1")));
        let custom = BearerTokens::new(&auth(dir.path(), "k1\n", "x-api-key", ""));
        assert!(!custom.takes_basic());
        assert!(!custom.allows_browser(&basic));
        assert!(custom.allows_browser(&with("x-api-key", "k1")));
        let scheme_basic = BearerTokens::new(&auth(dir.path(), "k1\n", "Authorization", "basic"));
        assert!(!scheme_basic.takes_basic());
        assert!(!scheme_basic.allows_browser(&basic));
        assert!(scheme_basic.allows_browser(&with("authorization", "Basic k1")));

        let bearer = BearerTokens::new(&auth(dir.path(), "k1\n", "Authorization", "Bearer"));
        assert!(bearer.takes_basic());
        assert!(bearer.allows_browser(&basic));
        let mut second = HeaderMap::new();
        second.append(http::header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        second.append(
            http::header::AUTHORIZATION,
            format!("Basic {}", encode(b"me:k1")).parse().unwrap(),
        );
        assert!(!bearer.allows_browser(&second));
    }

    /// Standard base64 with padding, for the tests.
    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut word = [0u8; 3];
            word[..chunk.len()].copy_from_slice(chunk);
            let bits = u32::from_be_bytes([0, word[0], word[1], word[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn without_a_scheme_the_whole_value_is_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = BearerTokens::new(&auth(dir.path(), "abc\n", "x-api-key", ""));
        assert!(tokens.allows(&with("x-api-key", "abc")));
        assert!(!tokens.allows(&with("x-api-key", "Bearer abc")));
        assert!(!tokens.allows(&with("authorization", "abc")));
    }

    #[test]
    fn a_changed_file_is_reread_and_a_broken_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let config = auth(dir.path(), "old\n", "Authorization", "Bearer");
        let tokens = BearerTokens::new(&config);
        assert!(tokens.allows(&with("authorization", "Bearer old")));
        std::fs::write(&config.bearer_tokens_file, "new-token\n").unwrap();
        // Looked at no more than once a second.
        tokens.checked_ms.store(0, Ordering::Relaxed);
        assert!(tokens.allows(&with("authorization", "Bearer new-token")));
        assert!(!tokens.allows(&with("authorization", "Bearer old")));
        std::fs::write(&config.bearer_tokens_file, "# nothing\n").unwrap();
        tokens.checked_ms.store(0, Ordering::Relaxed);
        assert!(tokens.allows(&with("authorization", "Bearer new-token")));
        std::fs::remove_file(&config.bearer_tokens_file).unwrap();
        tokens.checked_ms.store(0, Ordering::Relaxed);
        assert!(tokens.allows(&with("authorization", "Bearer new-token")));
    }

    #[test]
    fn an_unreadable_file_lets_nothing_through_until_it_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let config = Auth {
            bearer_tokens_file: dir.path().join("missing"),
            header: "Authorization".to_owned(),
            scheme: "Bearer".to_owned(),
        };
        let tokens = BearerTokens::new(&config);
        assert!(!tokens.allows(&with("authorization", "Bearer ")));
        std::fs::write(&config.bearer_tokens_file, "late\n").unwrap();
        tokens.checked_ms.store(0, Ordering::Relaxed);
        assert!(tokens.allows(&with("authorization", "Bearer late")));
    }

    #[test]
    fn equality_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}

//! API keys: the secret's format, scopes, and what a key may reach.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::ids::ApiKeyId;
use crate::network::CidrList;
use crate::project::ProjectName;
use crate::{DomainError, DomainResult, Timestamp};

/// A permission a key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Everything, including key management.
    #[serde(rename = "admin")]
    Admin,
    /// Read projects and pods.
    #[serde(rename = "projects:read")]
    ProjectsRead,
    /// Create, change and delete projects; start and stop pods.
    #[serde(rename = "projects:write")]
    ProjectsWrite,
    /// Read commands, their output and events.
    #[serde(rename = "commands:read")]
    CommandsRead,
    /// Run and cancel commands.
    #[serde(rename = "commands:write")]
    CommandsWrite,
    /// Manage webhooks.
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
    /// Read and verify the audit log.
    #[serde(rename = "audit:read")]
    AuditRead,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 7] = [
        Scope::Admin,
        Scope::ProjectsRead,
        Scope::ProjectsWrite,
        Scope::CommandsRead,
        Scope::CommandsWrite,
        Scope::WebhooksManage,
        Scope::AuditRead,
    ];

    /// Name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::ProjectsRead => "projects:read",
            Scope::ProjectsWrite => "projects:write",
            Scope::CommandsRead => "commands:read",
            Scope::CommandsWrite => "commands:write",
            Scope::WebhooksManage => "webhooks:manage",
            Scope::AuditRead => "audit:read",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = DomainError;
    fn from_str(s: &str) -> DomainResult<Self> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s).ok_or_else(|| {
            DomainError::invalid(
                "scopes",
                format!("unknown scope {s:?}; expected one of admin, projects:read, projects:write, commands:read, commands:write, webhooks:manage, audit:read"),
            )
        })
    }
}

/// A non-empty set of scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Scope>", into = "Vec<Scope>")]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// At least one scope is required.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> DomainResult<Self> {
        let set: BTreeSet<_> = scopes.into_iter().collect();
        if set.is_empty() {
            Err(DomainError::invalid("scopes", "at least one scope is required"))
        } else {
            Ok(Self(set))
        }
    }

    /// Whether the set grants `scope` (`admin` grants everything).
    pub fn grants(&self, scope: Scope) -> bool {
        self.0.contains(&Scope::Admin) || self.0.contains(&scope)
    }

    /// Iterates the scopes.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// Whether every scope of `other` is granted by this set (only `admin` covers `admin`).
    pub fn covers(&self, other: &ScopeSet) -> bool {
        other.iter().all(|scope| self.grants(scope))
    }
}

impl TryFrom<Vec<Scope>> for ScopeSet {
    type Error = DomainError;
    fn try_from(v: Vec<Scope>) -> DomainResult<Self> {
        Self::new(v)
    }
}

impl From<ScopeSet> for Vec<Scope> {
    fn from(s: ScopeSet) -> Self {
        s.0.into_iter().collect()
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_PREFIX: &str = "rdev_";
const RANDOM_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;

/// A full API key, `rdev_<32 base62>_<6 base62 CRC32 checksum>`. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// Total length of a key.
    pub const LEN: usize = SECRET_PREFIX.len() + RANDOM_LEN + 1 + CHECKSUM_LEN;

    /// Builds a key from 32 random bytes (the caller owns the randomness; each byte picks one
    /// base62 character, with negligible bias for a 190-bit secret).
    pub fn from_random_bytes(bytes: [u8; RANDOM_LEN]) -> Self {
        let random: String = bytes.iter().map(|b| BASE62[usize::from(*b) % 62] as char).collect();
        let checksum = checksum(&random);
        Self(format!("{SECRET_PREFIX}{random}_{checksum}"))
    }

    /// Parses a presented key; the checksum rejects typos without touching the store.
    pub fn parse(s: &str) -> DomainResult<Self> {
        let bad = || DomainError::Unauthorized("malformed API key".into());
        let rest = s.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let (random, sum) = rest.split_once('_').ok_or_else(bad)?;
        let well_formed = random.len() == RANDOM_LEN
            && sum.len() == CHECKSUM_LEN
            && random.bytes().chain(sum.bytes()).all(|b| b.is_ascii_alphanumeric());
        if !well_formed || checksum(random) != sum {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    /// The key text, to show the client exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 hash, the only form a store ever sees.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// A non-secret prefix for listings (`rdev_AbCd…`).
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(SECRET_PREFIX.len() + 4).collect()
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret([redacted])")
    }
}

fn checksum(random: &str) -> String {
    let mut n = crc32fast::hash(random.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out.iter().map(|b| *b as char).collect()
}

/// SHA-256 of a key; what stores index and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the stored hex form.
    pub fn from_hex(s: &str) -> DomainResult<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| DomainError::Internal(format!("bad stored key hash: {e}")))?;
        Ok(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// Which projects a key may see: all, or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProjectAccess {
    /// Every project.
    All,
    /// Only these.
    Only(BTreeSet<ProjectName>),
}

impl ProjectAccess {
    /// Whether `project` is visible.
    pub fn allows(&self, project: &ProjectName) -> bool {
        match self {
            ProjectAccess::All => true,
            ProjectAccess::Only(set) => set.contains(project),
        }
    }

    /// The list, or `None` for all projects (the wire form).
    pub fn as_list(&self) -> Option<Vec<ProjectName>> {
        match self {
            ProjectAccess::All => None,
            ProjectAccess::Only(set) => Some(set.iter().cloned().collect()),
        }
    }

    /// Whether every project `other` may see is visible here too.
    pub fn covers(&self, other: &ProjectAccess) -> bool {
        match (self, other) {
            (ProjectAccess::All, _) => true,
            (ProjectAccess::Only(_), ProjectAccess::All) => false,
            (ProjectAccess::Only(mine), ProjectAccess::Only(theirs)) => theirs.is_subset(mine),
        }
    }
}

/// An axis on which one key can be more powerful than another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAxis {
    /// What it may do.
    Scopes,
    /// Which projects it sees.
    Projects,
    /// Where it may be used from.
    AllowedIps,
    /// How long it lives.
    ExpiresAt,
}

impl PowerAxis {
    /// The key field that carries this axis.
    pub fn field(self) -> &'static str {
        match self {
            PowerAxis::Scopes => "scopes",
            PowerAxis::Projects => "projects",
            PowerAxis::AllowedIps => "allowed_ips",
            PowerAxis::ExpiresAt => "expires_at",
        }
    }
}

/// What a key may do, on every axis that ranks keys. A key may only create or manage keys
/// whose powers it covers: no key can widen its own power by minting or rotating another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Powers {
    /// Scopes.
    pub scopes: ScopeSet,
    /// Visible projects.
    pub projects: ProjectAccess,
    /// Allowed client networks (empty: anywhere).
    pub allowed_ips: CidrList,
    /// Expiry (`None`: never).
    pub expires_at: Option<Timestamp>,
}

impl Powers {
    /// The first axis on which `other` exceeds these powers, or `None` when they cover it.
    pub fn first_exceeded_by(&self, other: &Powers) -> Option<PowerAxis> {
        let expiry_covered = match (self.expires_at, other.expires_at) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs <= mine,
        };
        [
            (self.scopes.covers(&other.scopes), PowerAxis::Scopes),
            (self.projects.covers(&other.projects), PowerAxis::Projects),
            (self.allowed_ips.covers(&other.allowed_ips), PowerAxis::AllowedIps),
            (expiry_covered, PowerAxis::ExpiresAt),
        ]
        .into_iter()
        .find_map(|(covered, axis)| (!covered).then_some(axis))
    }
}

/// A key's previous hash, still valid until `valid_until` after a rotation with grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousSecret {
    /// Hash of the old secret.
    pub hash: KeyHash,
    /// End of the grace period.
    pub valid_until: Timestamp,
}

/// An API key as stored (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Stable id.
    pub id: ApiKeyId,
    /// Human name.
    pub name: String,
    /// Non-secret prefix of the current secret.
    pub prefix: String,
    /// Hash of the current secret.
    pub hash: KeyHash,
    /// The old secret during a rotation grace period.
    pub previous: Option<PreviousSecret>,
    /// Permissions.
    pub scopes: ScopeSet,
    /// Visible projects.
    pub projects: ProjectAccess,
    /// Client networks the key may be used from (empty: anywhere).
    pub allowed_ips: CidrList,
    /// Per-key override of the rate limit (requests per second).
    pub rate_limit_rps: Option<u32>,
    /// Expiry.
    pub expires_at: Option<Timestamp>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Revocation time; a revoked key never authenticates again.
    pub revoked_at: Option<Timestamp>,
    /// Last successful authentication (updated at most once a minute).
    pub last_used_at: Option<Timestamp>,
}

impl ApiKey {
    /// The key's powers, to compare with another key's.
    pub fn powers(&self) -> Powers {
        Powers {
            scopes: self.scopes.clone(),
            projects: self.projects.clone(),
            allowed_ips: self.allowed_ips.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// Why a presented key was refused (all map to 401 or 403; the store is not told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    /// Unknown hash, or a rotated-out secret past its grace.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Used from a network outside `allowed_ips`.
    IpNotAllowed,
}

impl ApiKey {
    /// Checks a key found by `presented` hash against time and client address.
    pub fn check(&self, presented: &KeyHash, now: Timestamp, client_ip: IpAddr) -> Result<(), KeyRejection> {
        let current = presented == &self.hash;
        let in_grace = self.previous.is_some_and(|p| &p.hash == presented && now < p.valid_until);
        if !current && !in_grace {
            return Err(KeyRejection::Unknown);
        }
        if self.revoked_at.is_some() {
            return Err(KeyRejection::Revoked);
        }
        if self.expires_at.is_some_and(|e| now >= e) {
            return Err(KeyRejection::Expired);
        }
        if !self.allowed_ips.allows(client_ip) {
            return Err(KeyRejection::IpNotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn powers(scopes: &[Scope], projects: Option<&[&str]>, ips: &[&str], expires_in: Option<i64>) -> Powers {
        let base = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        Powers {
            scopes: ScopeSet::new(scopes.iter().copied()).unwrap(),
            projects: projects.map_or(ProjectAccess::All, |p| {
                ProjectAccess::Only(p.iter().map(|n| ProjectName::parse(n).unwrap()).collect())
            }),
            allowed_ips: CidrList::parse(ips).unwrap(),
            expires_at: expires_in.map(|s| base + chrono::TimeDelta::seconds(s)),
        }
    }

    #[test]
    fn a_key_covers_only_keys_no_wider_on_any_axis() {
        let limited = powers(&[Scope::Admin], Some(&["alpha", "beta"]), &["10.0.0.0/8"], Some(3600));
        let inside = powers(&[Scope::CommandsRead], Some(&["alpha"]), &["10.1.0.0/16"], Some(60));
        assert_eq!(limited.first_exceeded_by(&inside), None);
        let cases = [
            (powers(&[Scope::Admin], None, &["10.0.0.0/8"], Some(60)), PowerAxis::Projects),
            (powers(&[Scope::Admin], Some(&["gamma"]), &["10.0.0.0/8"], Some(60)), PowerAxis::Projects),
            (powers(&[Scope::Admin], Some(&["alpha"]), &[], Some(60)), PowerAxis::AllowedIps),
            (powers(&[Scope::Admin], Some(&["alpha"]), &["11.0.0.0/8"], Some(60)), PowerAxis::AllowedIps),
            (powers(&[Scope::Admin], Some(&["alpha"]), &["0.0.0.0/0"], Some(60)), PowerAxis::AllowedIps),
            (powers(&[Scope::Admin], Some(&["alpha"]), &["10.0.0.0/8"], None), PowerAxis::ExpiresAt),
            (powers(&[Scope::Admin], Some(&["alpha"]), &["10.0.0.0/8"], Some(3601)), PowerAxis::ExpiresAt),
        ];
        for (wider, axis) in cases {
            assert_eq!(limited.first_exceeded_by(&wider), Some(axis), "{wider:?}");
        }
        let reader = powers(&[Scope::CommandsRead, Scope::AuditRead], None, &[], None);
        let writer = powers(&[Scope::CommandsWrite], None, &[], None);
        let admin = powers(&[Scope::Admin], None, &[], None);
        assert_eq!(reader.first_exceeded_by(&writer), Some(PowerAxis::Scopes));
        assert_eq!(reader.first_exceeded_by(&admin), Some(PowerAxis::Scopes));
        assert_eq!(admin.first_exceeded_by(&limited), None, "an unlimited admin covers everything");
    }

    #[test]
    fn generated_keys_parse_and_hide_in_debug() {
        let key = ApiKeySecret::from_random_bytes([7; 32]);
        assert_eq!(key.expose().len(), ApiKeySecret::LEN);
        assert_eq!(ApiKeySecret::parse(key.expose()), Ok(key.clone()));
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let key = ApiKeySecret::from_random_bytes([42; 32]);
        let mut text = key.expose().to_owned();
        let replaced = if text.as_bytes()[10] == b'a' { "b" } else { "a" };
        text.replace_range(10..11, replaced);
        assert!(ApiKeySecret::parse(&text).is_err());
        assert!(ApiKeySecret::parse("rdev_short_abcdef").is_err());
        assert!(ApiKeySecret::parse("").is_err());
    }

    #[test]
    fn admin_grants_every_scope() {
        let admin = ScopeSet::new([Scope::Admin]).expect("non-empty");
        assert!(Scope::ALL.iter().all(|s| admin.grants(*s)));
        let reader = ScopeSet::new([Scope::ProjectsRead]).expect("non-empty");
        assert!(!reader.grants(Scope::ProjectsWrite));
        assert!(ScopeSet::new([]).is_err());
    }

    proptest! {
        #[test]
        fn every_random_key_round_trips(bytes in prop::array::uniform32(any::<u8>())) {
            let key = ApiKeySecret::from_random_bytes(bytes);
            prop_assert_eq!(ApiKeySecret::parse(key.expose()), Ok(key.clone()));
            prop_assert_eq!(KeyHash::from_hex(&key.hash().to_hex()), Ok(key.hash()));
        }

        #[test]
        fn arbitrary_text_never_panics_the_parser(s in "\\PC{0,60}") {
            let _ = ApiKeySecret::parse(&s);
        }
    }
}

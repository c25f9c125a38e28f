//! Token kinds and the keyed pseudonyms computed from normalised identifiers.
//!
//! A token is `HMAC-SHA256(K(project, kind), length-prefixed fields)` truncated
//! to 128 bits. Each field is preceded by its length as a big-endian `u32`, so
//! `("AB", "C")` and `("A", "BC")` hash differently.

use crate::identity::Identity;
use crate::keys::KeyedHasher;
use crate::normalise::{self, NhsNumber};
use crate::phonetic::soundex;
use crate::secret::LinkageSecret;

/// Length of a token in bytes (128 bits).
pub const TOKEN_LEN: usize = 16;

/// A keyed pseudonym.
pub type Token = [u8; TOKEN_LEN];

/// The kinds of token, strongest first. A record's `pid` is the first kind
/// its identifiers allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenKind {
    /// NHS number.
    NhsNumber,
    /// Another national identifier.
    NationalId,
    /// Family name, given name, date of birth, sex.
    NameDobSex,
    /// Family name, given-name initial, date of birth, sex.
    NameInitialDobSex,
    /// Family name, given name, date of birth, postcode sector.
    NameDobSector,
    /// Soundex of family and given names, date of birth, sex.
    PhoneticDobSex,
    /// Family name, given name, date of birth (for records without sex).
    NameDob,
    /// The node's own record number, scoped to the node: never the same
    /// token at two nodes, so such records join only through linkage.
    LocalId,
}

impl TokenKind {
    /// Every kind, strongest first.
    pub const ALL: [TokenKind; 8] = [
        TokenKind::NhsNumber,
        TokenKind::NationalId,
        TokenKind::NameDobSex,
        TokenKind::NameInitialDobSex,
        TokenKind::NameDobSector,
        TokenKind::PhoneticDobSex,
        TokenKind::NameDob,
        TokenKind::LocalId,
    ];

    /// The stable name used in key derivation and in published token tables.
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::NhsNumber => "nhs_number",
            TokenKind::NationalId => "national_id",
            TokenKind::NameDobSex => "name_dob_sex",
            TokenKind::NameInitialDobSex => "name_initial_dob_sex",
            TokenKind::NameDobSector => "name_dob_sector",
            TokenKind::PhoneticDobSex => "phonetic_dob_sex",
            TokenKind::NameDob => "name_dob",
            TokenKind::LocalId => "local_id",
        }
    }

    /// Parses a kind from its [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl Identity {
    /// The fields hashed for `kind`, or `None` when a component is missing.
    /// A local id is hashed with `local_scope` (the node), and not at all
    /// without one.
    pub fn fields<'a>(
        &'a self,
        kind: TokenKind,
        local_scope: Option<&'a str>,
    ) -> Option<TokenFields<'a>> {
        let name_dob = || -> Option<(&str, &str, &str)> {
            Some((
                self.family_name.as_deref()?,
                self.given_name.as_deref()?,
                std::str::from_utf8(self.date_of_birth.as_ref()?).ok()?,
            ))
        };
        let fields = match kind {
            TokenKind::NhsNumber => {
                TokenFields::one(std::str::from_utf8(self.nhs_number.as_ref()?).ok()?)
            }
            TokenKind::NationalId => TokenFields::one(self.national_id.as_deref()?),
            TokenKind::NameDob => {
                let (f, g, d) = name_dob()?;
                TokenFields::three(f, g, d)
            }
            TokenKind::LocalId => TokenFields::two(local_scope?, self.local_id.as_deref()?),
            TokenKind::NameDobSex => {
                let (f, g, d) = name_dob()?;
                TokenFields::four(f, g, d, self.sex?.code())
            }
            TokenKind::NameInitialDobSex => {
                let (f, g, d) = name_dob()?;
                TokenFields::four(f, &g[..1], d, self.sex?.code())
            }
            TokenKind::NameDobSector => {
                let (f, g, d) = name_dob()?;
                let sector = normalise::postcode_sector(self.postcode.as_deref()?)?;
                TokenFields::four(f, g, d, sector)
            }
            TokenKind::PhoneticDobSex => {
                let (f, g, d) = name_dob()?;
                TokenFields::phonetic(soundex(f), soundex(g), d, self.sex?.code())
            }
        };
        Some(fields)
    }
}

/// The normalised fields of one token, borrowed where possible.
#[derive(Debug)]
pub struct TokenFields<'a> {
    parts: [&'a str; 4],
    codes: [[u8; 4]; 2],
    len: usize,
    phonetic: bool,
}

impl<'a> TokenFields<'a> {
    fn one(a: &'a str) -> Self {
        Self {
            parts: [a, "", "", ""],
            codes: [[0; 4]; 2],
            len: 1,
            phonetic: false,
        }
    }

    fn two(a: &'a str, b: &'a str) -> Self {
        Self {
            parts: [a, b, "", ""],
            codes: [[0; 4]; 2],
            len: 2,
            phonetic: false,
        }
    }

    fn three(a: &'a str, b: &'a str, c: &'a str) -> Self {
        Self {
            parts: [a, b, c, ""],
            codes: [[0; 4]; 2],
            len: 3,
            phonetic: false,
        }
    }

    fn four(a: &'a str, b: &'a str, c: &'a str, d: &'a str) -> Self {
        Self {
            parts: [a, b, c, d],
            codes: [[0; 4]; 2],
            len: 4,
            phonetic: false,
        }
    }

    fn phonetic(family: [u8; 4], given: [u8; 4], dob: &'a str, sex: &'a str) -> Self {
        Self {
            parts: ["", "", dob, sex],
            codes: [family, given],
            len: 4,
            phonetic: true,
        }
    }

    fn field(&self, i: usize) -> &[u8] {
        if self.phonetic && i < 2 {
            &self.codes[i]
        } else {
            self.parts[i].as_bytes()
        }
    }

    /// Writes the length-prefixed encoding into `buf` (cleared first).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.clear();
        for i in 0..self.len {
            let field = self.field(i);
            buf.extend_from_slice(&(field.len() as u32).to_be_bytes());
            buf.extend_from_slice(field);
        }
    }
}

/// NHS numbers a node holds for more than one person (see
/// [`crate::identity::SharedNumberFinder`]).
pub type SharedNumbers = std::collections::HashSet<NhsNumber>;

/// Computes one project's tokens: one prepared keyed hasher per token kind.
#[derive(Debug, Clone)]
pub struct Tokeniser {
    project: String,
    hashers: [KeyedHasher; 8],
    local_scope: Option<String>,
    /// NHS numbers that are not a `pid` at this node: it holds them for
    /// several people (one record carrying a relative's number), so their
    /// records take their next strongest token and linkage tells them apart.
    /// Shared by clones, so a node updates every user at once.
    shared_numbers: std::sync::Arc<std::sync::RwLock<std::sync::Arc<SharedNumbers>>>,
}

impl Tokeniser {
    /// Derives every token kind's key for `project`.
    pub fn new(secret: &LinkageSecret, project: &str) -> Self {
        let hashers = TokenKind::ALL.map(|kind| KeyedHasher::derive(secret, project, kind));
        Self {
            project: project.to_string(),
            hashers,
            local_scope: None,
            shared_numbers: Default::default(),
        }
    }

    /// Sets the NHS numbers this node holds for several people; returns
    /// whether they changed.
    pub fn set_shared_numbers(&self, numbers: SharedNumbers) -> bool {
        let mut slot = self
            .shared_numbers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if **slot == numbers {
            return false;
        }
        *slot = std::sync::Arc::new(numbers);
        true
    }

    /// The NHS numbers this node holds for several people.
    pub fn shared_numbers(&self) -> std::sync::Arc<SharedNumbers> {
        self.shared_numbers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets records without stronger identifiers take a `pid` from their
    /// local id, scoped to `scope` (the node's name) so that two nodes'
    /// numbering never gives the same token.
    pub fn with_local_scope(mut self, scope: &str) -> Self {
        self.local_scope = Some(scope.to_string());
        self
    }

    /// The project whose pseudonym domain this tokeniser computes.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Hashes encoded fields with the key of `kind`, truncated to 128 bits.
    pub fn token_of_encoded(&self, kind: TokenKind, encoded: &[u8]) -> Token {
        let full = self.hashers[kind as usize].mac(encoded);
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(&full[..TOKEN_LEN]);
        token
    }

    /// The token of `kind` for `identity`, if its components are present.
    /// `buf` is scratch space reused across calls.
    pub fn token(&self, kind: TokenKind, identity: &Identity, buf: &mut Vec<u8>) -> Option<Token> {
        identity
            .fields(kind, self.local_scope.as_deref())?
            .encode(buf);
        Some(self.token_of_encoded(kind, buf))
    }

    /// The strongest available token for `identity`: its `pid`. An NHS
    /// number this node holds for several people is passed over.
    pub fn pid(&self, identity: &Identity, buf: &mut Vec<u8>) -> Option<Token> {
        let shared = self.shared_numbers();
        let skip_nhs = identity.nhs_number.is_some_and(|n| shared.contains(&n));
        TokenKind::ALL
            .into_iter()
            .filter(|kind| !(skip_nhs && *kind == TokenKind::NhsNumber))
            .find_map(|kind| self.token(kind, identity, buf))
    }

    /// The NHS-number token of a validated number, without allocating.
    pub fn nhs_number_token(&self, nhs: &NhsNumber) -> Token {
        let mut msg = [0u8; 14];
        msg[..4].copy_from_slice(&10u32.to_be_bytes());
        msg[4..].copy_from_slice(nhs);
        self.token_of_encoded(TokenKind::NhsNumber, &msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::RawIdentity;

    fn tokeniser(project: &str) -> Tokeniser {
        Tokeniser::new(&LinkageSecret::from_bytes([42; 32]), project).with_local_scope("node-a")
    }

    fn alice() -> Identity {
        Identity::normalise(&RawIdentity {
            nhs_number: Some("943 476 5919"),
            family_name: Some("Smith"),
            given_name: Some("Alice"),
            date_of_birth: Some("03/02/1950"),
            sex: Some("2"),
            postcode: Some("LS1 6AB"),
            national_id: Some("AB 12 34 56"),
            local_id: Some("H123"),
            ..Default::default()
        })
    }

    #[test]
    fn length_prefix_separates_field_boundaries() {
        let t = tokeniser("p");
        let mut buf = Vec::new();
        TokenFields::four("AB", "C", "19500203", "F").encode(&mut buf);
        let a = t.token_of_encoded(TokenKind::NameDobSex, &buf);
        TokenFields::four("A", "BC", "19500203", "F").encode(&mut buf);
        let b = t.token_of_encoded(TokenKind::NameDobSex, &buf);
        assert_ne!(a, b);
    }

    #[test]
    fn same_person_same_token_whatever_the_spelling_of_formats() {
        let t = tokeniser("p");
        let mut buf = Vec::new();
        let other = Identity::normalise(&RawIdentity {
            nhs_number: Some("9434765919"),
            family_name: Some(" SMITH "),
            given_name: Some("alice"),
            date_of_birth: Some("1950-02-03"),
            sex: Some("F"),
            postcode: Some("ls16ab"),
            national_id: Some("ab123456"),
            local_id: Some(" H123"),
            ..Default::default()
        });
        for kind in TokenKind::ALL {
            assert_eq!(
                t.token(kind, &alice(), &mut buf),
                t.token(kind, &other, &mut buf),
                "{kind:?}"
            );
            assert!(t.token(kind, &alice(), &mut buf).is_some(), "{kind:?}");
        }
        assert_eq!(
            t.nhs_number_token(b"9434765919"),
            t.token(TokenKind::NhsNumber, &alice(), &mut buf).unwrap()
        );
    }

    #[test]
    fn missing_components_yield_no_token_and_pid_falls_back_in_order() {
        let t = tokeniser("p");
        let mut buf = Vec::new();
        let mut id = alice();
        id.nhs_number = None;
        assert_eq!(t.token(TokenKind::NhsNumber, &id, &mut buf), None);
        let pid_is = |id: &Identity, kind: TokenKind, buf: &mut Vec<u8>| {
            let expected = t.token(kind, id, buf);
            assert!(expected.is_some(), "{kind:?}");
            assert_eq!(t.pid(id, buf), expected, "{kind:?}");
        };
        pid_is(&id, TokenKind::NationalId, &mut buf);
        id.national_id = None;
        pid_is(&id, TokenKind::NameDobSex, &mut buf);
        id.sex = None;
        assert_eq!(t.token(TokenKind::NameDobSex, &id, &mut buf), None);
        pid_is(&id, TokenKind::NameDobSector, &mut buf);
        id.postcode = None;
        pid_is(&id, TokenKind::NameDob, &mut buf);
        id.given_name = None;
        assert_eq!(t.token(TokenKind::NameDob, &id, &mut buf), None);
        pid_is(&id, TokenKind::LocalId, &mut buf);
        id.local_id = None;
        assert_eq!(t.pid(&id, &mut buf), None);
        assert_eq!(t.pid(&Identity::default(), &mut buf), None);
    }

    #[test]
    fn local_ids_are_scoped_to_their_node_and_need_a_scope() {
        let secret = LinkageSecret::from_bytes([42; 32]);
        let mut buf = Vec::new();
        let id = Identity {
            local_id: Some("H123".into()),
            ..Default::default()
        };
        let unscoped = Tokeniser::new(&secret, "p");
        assert_eq!(unscoped.pid(&id, &mut buf), None);
        let a = Tokeniser::new(&secret, "p").with_local_scope("a");
        let b = Tokeniser::new(&secret, "p").with_local_scope("b");
        assert!(a.pid(&id, &mut buf).is_some());
        assert_ne!(a.pid(&id, &mut buf), b.pid(&id, &mut buf));
    }

    #[test]
    fn pid_prefers_nhs_number() {
        let t = tokeniser("p");
        let mut buf = Vec::new();
        assert_eq!(
            t.pid(&alice(), &mut buf),
            t.token(TokenKind::NhsNumber, &alice(), &mut buf)
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in TokenKind::ALL {
            assert_eq!(TokenKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(TokenKind::from_name("nope"), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn different_projects_give_different_tokens(p1 in "[a-z]{1,8}", p2 in "[a-z]{1,8}", nine in 100_000_000u64..999_999_999) {
                prop_assume!(p1 != p2);
                let mut digits = format!("{nine:09}").into_bytes();
                let Some(check) = normalise::nhs_check_digit(&digits) else { return Ok(()); };
                digits.push(b'0' + check);
                let nhs: NhsNumber = digits.try_into().unwrap();
                prop_assert_ne!(tokeniser(&p1).nhs_number_token(&nhs), tokeniser(&p2).nhs_number_token(&nhs));
            }

            #[test]
            fn moving_a_field_boundary_changes_the_token(a in "[A-Z]{1,6}", b in "[A-Z]{2,6}") {
                let t = tokeniser("p");
                let mut buf = Vec::new();
                TokenFields::four(&a, &b, "19500203", "F").encode(&mut buf);
                let split = t.token_of_encoded(TokenKind::NameDobSex, &buf);
                let moved_a = format!("{a}{}", &b[..1]);
                TokenFields::four(&moved_a, &b[1..], "19500203", "F").encode(&mut buf);
                prop_assert_ne!(split, t.token_of_encoded(TokenKind::NameDobSex, &buf));
            }
        }
    }
}

//! Field tokens for probabilistic linkage: one keyed token per identifier
//! component (and per date-of-birth part, per name initial, per Soundex
//! code), plus one-edit variants of names, so the coordinator can score how
//! far two records agree without seeing any identifier. Only the
//! coordinator's linkage stage may read them: a single-field token is a
//! weaker pseudonym than a `pid`.
//!
//! One-edit variants: a name and each of its one-letter deletions. Two names
//! share a variant exactly when one substitution, insertion, deletion or
//! swap of neighbours turns one into the other.

use crate::identity::Identity;
use crate::keys::{KEY_VERSION, KeyedHasher, hkdf_sha256};
use crate::normalise;
use crate::phonetic::soundex;
use crate::secret::LinkageSecret;
use crate::token::{TOKEN_LEN, Token};

/// The components a field token is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    NhsNumber,
    NationalId,
    Family,
    Given,
    GivenInitial,
    GivenCanonical,
    FamilyPhonetic,
    Dob,
    DobYear,
    DobMonthDay,
    Sex,
    Postcode,
    Sector,
    Locality,
    FamilyVariant,
    GivenVariant,
    NationalIdVariant,
    LocalityVariant,
    DobVariant,
    PostcodeVariant,
    AddressWord,
}

impl Field {
    /// Every field, in column order: single tokens, then token lists.
    pub const ALL: [Field; 21] = [
        Field::NhsNumber,
        Field::NationalId,
        Field::Family,
        Field::Given,
        Field::GivenInitial,
        Field::GivenCanonical,
        Field::FamilyPhonetic,
        Field::Dob,
        Field::DobYear,
        Field::DobMonthDay,
        Field::Sex,
        Field::Postcode,
        Field::Sector,
        Field::Locality,
        Field::FamilyVariant,
        Field::GivenVariant,
        Field::NationalIdVariant,
        Field::LocalityVariant,
        Field::DobVariant,
        Field::PostcodeVariant,
        Field::AddressWord,
    ];

    /// The field's name: its column in a token table and its key's label.
    pub fn name(self) -> &'static str {
        match self {
            Field::NhsNumber => "nhs_number",
            Field::NationalId => "national_id",
            Field::Family => "family",
            Field::Given => "given",
            Field::GivenInitial => "given_initial",
            Field::GivenCanonical => "given_canonical",
            Field::FamilyPhonetic => "family_phonetic",
            Field::Dob => "dob",
            Field::DobYear => "dob_year",
            Field::DobMonthDay => "dob_month_day",
            Field::Sex => "sex",
            Field::Postcode => "postcode",
            Field::Sector => "sector",
            Field::Locality => "locality",
            Field::FamilyVariant => "family_variants",
            Field::GivenVariant => "given_variants",
            Field::NationalIdVariant => "national_id_variants",
            Field::LocalityVariant => "locality_variants",
            Field::DobVariant => "dob_variants",
            Field::PostcodeVariant => "postcode_variants",
            Field::AddressWord => "address_words",
        }
    }

    /// The label of the field's key. Family and given names share a key
    /// (and so do their variants), so names written in each other's place
    /// still compare equal.
    fn key_label(self) -> &'static str {
        match self {
            Field::Family | Field::Given => "name",
            Field::FamilyVariant | Field::GivenVariant => "name_variants",
            other => other.name(),
        }
    }

    /// Whether the field is a sorted list of tokens rather than one token.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Field::FamilyVariant
                | Field::GivenVariant
                | Field::NationalIdVariant
                | Field::LocalityVariant
                | Field::DobVariant
                | Field::PostcodeVariant
                | Field::AddressWord
        )
    }
}

/// One record's field tokens; `None` (or an empty list) where the component
/// is missing. Lists are sorted and without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldTokens {
    pub nhs_number: Option<Token>,
    pub national_id: Option<Token>,
    pub family: Option<Token>,
    pub given: Option<Token>,
    pub given_initial: Option<Token>,
    /// The given name's canonical form (a nickname's full name).
    pub given_canonical: Option<Token>,
    pub family_phonetic: Option<Token>,
    pub dob: Option<Token>,
    pub dob_year: Option<Token>,
    pub dob_month_day: Option<Token>,
    pub sex: Option<Token>,
    pub postcode: Option<Token>,
    pub sector: Option<Token>,
    pub locality: Option<Token>,
    /// The family name and its one-letter deletions.
    pub family_variants: Vec<Token>,
    /// The given name and its one-letter deletions.
    pub given_variants: Vec<Token>,
    /// The national id and its one-character deletions.
    pub national_id_variants: Vec<Token>,
    /// The locality and its one-letter deletions.
    pub locality_variants: Vec<Token>,
    /// The date of birth digits and their one-digit deletions.
    pub dob_variants: Vec<Token>,
    /// The postcode and its one-character deletions.
    pub postcode_variants: Vec<Token>,
    /// Each word of the address.
    pub address_words: Vec<Token>,
}

impl FieldTokens {
    /// The single token of `field` (lists excluded).
    pub fn get(&self, field: Field) -> Option<&Token> {
        match field {
            Field::NhsNumber => self.nhs_number.as_ref(),
            Field::NationalId => self.national_id.as_ref(),
            Field::Family => self.family.as_ref(),
            Field::Given => self.given.as_ref(),
            Field::GivenInitial => self.given_initial.as_ref(),
            Field::GivenCanonical => self.given_canonical.as_ref(),
            Field::FamilyPhonetic => self.family_phonetic.as_ref(),
            Field::Dob => self.dob.as_ref(),
            Field::DobYear => self.dob_year.as_ref(),
            Field::DobMonthDay => self.dob_month_day.as_ref(),
            Field::Sex => self.sex.as_ref(),
            Field::Postcode => self.postcode.as_ref(),
            Field::Sector => self.sector.as_ref(),
            Field::Locality => self.locality.as_ref(),
            _ => None,
        }
    }

    /// Sets the single token of `field` (ignored for lists).
    pub fn set(&mut self, field: Field, token: Option<Token>) {
        let slot = match field {
            Field::NhsNumber => &mut self.nhs_number,
            Field::NationalId => &mut self.national_id,
            Field::Family => &mut self.family,
            Field::Given => &mut self.given,
            Field::GivenInitial => &mut self.given_initial,
            Field::GivenCanonical => &mut self.given_canonical,
            Field::FamilyPhonetic => &mut self.family_phonetic,
            Field::Dob => &mut self.dob,
            Field::DobYear => &mut self.dob_year,
            Field::DobMonthDay => &mut self.dob_month_day,
            Field::Sex => &mut self.sex,
            Field::Postcode => &mut self.postcode,
            Field::Sector => &mut self.sector,
            Field::Locality => &mut self.locality,
            _ => return,
        };
        *slot = token;
    }

    /// The token list of a list field (empty for single-token fields).
    pub fn list(&self, field: Field) -> &[Token] {
        match field {
            Field::FamilyVariant => &self.family_variants,
            Field::GivenVariant => &self.given_variants,
            Field::NationalIdVariant => &self.national_id_variants,
            Field::LocalityVariant => &self.locality_variants,
            Field::DobVariant => &self.dob_variants,
            Field::PostcodeVariant => &self.postcode_variants,
            Field::AddressWord => &self.address_words,
            _ => &[],
        }
    }

    /// Replaces the token list of a list field (ignored for single tokens).
    pub fn set_list(&mut self, field: Field, tokens: Vec<Token>) {
        let slot = match field {
            Field::FamilyVariant => &mut self.family_variants,
            Field::GivenVariant => &mut self.given_variants,
            Field::NationalIdVariant => &mut self.national_id_variants,
            Field::LocalityVariant => &mut self.locality_variants,
            Field::DobVariant => &mut self.dob_variants,
            Field::PostcodeVariant => &mut self.postcode_variants,
            Field::AddressWord => &mut self.address_words,
            _ => return,
        };
        *slot = tokens;
    }
}

/// Computes one project's field tokens, a prepared key per field.
#[derive(Debug, Clone)]
pub struct FieldTokeniser {
    hashers: Vec<KeyedHasher>,
}

impl FieldTokeniser {
    /// Derives every field's key for `project`: `HKDF(secret, info =
    /// "carrow/v1/<project>/field/<field>")`.
    pub fn new(secret: &LinkageSecret, project: &str) -> Self {
        let hashers = Field::ALL
            .iter()
            .map(|field| {
                let info = format!(
                    "carrow/v{KEY_VERSION}/{project}/field/{}",
                    field.key_label()
                );
                let mut key = zeroize::Zeroizing::new([0u8; 32]);
                hkdf_sha256(secret.expose(), None, info.as_bytes(), key.as_mut());
                KeyedHasher::new(key.as_ref())
            })
            .collect();
        Self { hashers }
    }

    fn token(&self, field: Field, value: &[u8]) -> Token {
        // Fields are declared in `Field::ALL` order.
        let full = self.hashers[field as usize].mac(value);
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(&full[..TOKEN_LEN]);
        token
    }

    /// The field tokens of a normalised identity.
    pub fn tokens(&self, identity: &Identity) -> FieldTokens {
        let mut out = FieldTokens {
            nhs_number: identity
                .nhs_number
                .map(|n| self.token(Field::NhsNumber, &n)),
            ..Default::default()
        };
        if let Some(family) = identity.family_name.as_deref() {
            out.family = Some(self.token(Field::Family, family.as_bytes()));
            out.family_phonetic = Some(self.token(Field::FamilyPhonetic, &soundex(family)));
            out.family_variants = self.variants(Field::FamilyVariant, family.as_bytes());
        }
        if let Some(given) = identity.given_name.as_deref() {
            out.given = Some(self.token(Field::Given, given.as_bytes()));
            out.given_initial = Some(self.token(Field::GivenInitial, &given.as_bytes()[..1]));
            out.given_canonical = Some(self.token(
                Field::GivenCanonical,
                normalise::given_name_canonical(given).as_bytes(),
            ));
            out.given_variants = self.variants(Field::GivenVariant, given.as_bytes());
        }
        if let Some(dob) = identity.date_of_birth.as_ref() {
            out.dob = Some(self.token(Field::Dob, dob));
            out.dob_year = Some(self.token(Field::DobYear, &dob[..4]));
            out.dob_month_day = Some(self.token(Field::DobMonthDay, &dob[4..]));
            out.dob_variants = self.variants(Field::DobVariant, dob);
        }
        out.sex = identity
            .sex
            .map(|s| self.token(Field::Sex, s.code().as_bytes()));
        if let Some(id) = identity.national_id.as_deref() {
            out.national_id = Some(self.token(Field::NationalId, id.as_bytes()));
            out.national_id_variants = self.variants(Field::NationalIdVariant, id.as_bytes());
        }
        if let Some(locality) = identity.locality.as_deref() {
            out.locality = Some(self.token(Field::Locality, locality.as_bytes()));
            out.locality_variants = self.variants(Field::LocalityVariant, locality.as_bytes());
        }
        if let Some(address) = identity.address.as_deref() {
            let mut words: Vec<Token> = address
                .split(' ')
                .map(|w| self.token(Field::AddressWord, w.as_bytes()))
                .collect();
            words.sort_unstable();
            words.dedup();
            out.address_words = words;
        }
        if let Some(postcode) = identity.postcode.as_deref() {
            out.postcode = Some(self.token(Field::Postcode, postcode.as_bytes()));
            out.sector = normalise::postcode_sector(postcode)
                .map(|s| self.token(Field::Sector, s.as_bytes()));
            out.postcode_variants = self.variants(Field::PostcodeVariant, postcode.as_bytes());
        }
        out
    }

    /// Tokens of `value` and each of its one-character deletions, sorted,
    /// without repeats.
    fn variants(&self, field: Field, bytes: &[u8]) -> Vec<Token> {
        let mut out = vec![self.token(field, bytes)];
        if bytes.len() > 1 {
            let mut buf = Vec::with_capacity(bytes.len());
            for i in 0..bytes.len() {
                buf.clear();
                buf.extend_from_slice(&bytes[..i]);
                buf.extend_from_slice(&bytes[i + 1..]);
                out.push(self.token(field, &buf));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Whether two sorted variant lists share a token (names within one edit).
pub fn share_variant(a: &[Token], b: &[Token]) -> bool {
    shared(a, b) > 0
}

/// How many tokens two sorted lists share.
pub fn shared(a: &[Token], b: &[Token]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::RawIdentity;

    fn tokens(family: &str, given: &str, dob: &str) -> FieldTokens {
        let secret = LinkageSecret::from_bytes([7u8; 32]);
        FieldTokeniser::new(&secret, "p").tokens(&Identity::normalise(&RawIdentity {
            family_name: Some(family),
            given_name: Some(given),
            date_of_birth: Some(dob),
            sex: Some("F"),
            postcode: Some("LS6 2QT"),
            ..Default::default()
        }))
    }

    #[test]
    fn names_one_edit_apart_share_a_variant_and_others_do_not() {
        let base = tokens("Smith", "Anna", "1950-02-03");
        for (typed, close) in [
            ("Smyth", true),  // substitution
            ("Smth", true),   // deletion
            ("Smitth", true), // insertion
            ("Smiht", true),  // neighbours swapped
            ("Smythe", false),
            ("Jones", false),
        ] {
            let other = tokens(typed, "Anna", "1950-02-03");
            assert_eq!(
                share_variant(&base.family_variants, &other.family_variants),
                close,
                "{typed}"
            );
        }
    }

    #[test]
    fn date_parts_and_postcode_sector_agree_separately() {
        let a = tokens("Smith", "Anna", "1950-02-03");
        let b = tokens("Smith", "Anne", "1950-03-02");
        assert_eq!(a.dob_year, b.dob_year);
        assert_ne!(a.dob, b.dob);
        assert_ne!(a.dob_month_day, b.dob_month_day);
        assert_eq!(a.given_initial, b.given_initial);
        assert_ne!(a.given, b.given);
        assert_eq!(a.sector, b.sector);
        // Different fields are keyed apart: the same text never gives the same token.
        assert!(!a.family_variants.contains(&a.family.unwrap()));
    }
}

//! The kinds of person identifier a node can declare, a record's raw
//! identifiers and their normalised form.

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::normalise::{self, BirthDate, NamePart, NhsNumber, Sex};

/// A kind of person identifier. Node configs map each to local columns; the
/// `pid`, the linkage token table and field tokens are computed from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifierKind {
    /// NHS number (validated by its modulus-11 check digit).
    NhsNumber,
    /// Another national person identifier (a CHI number, a social security
    /// number): letters and digits.
    NationalId,
    /// The organisation's own record number for the person (hospital number,
    /// client id); a `pid` from it is scoped to the node.
    LocalId,
    FamilyName,
    GivenName,
    DateOfBirth,
    Sex,
    /// UK postcode (validated; gives a sector too).
    Postcode,
    /// A postal code of another country: letters and digits as written.
    PostalCode,
    /// Street address lines (number, street, building), compared word by word.
    Address,
    /// Town, suburb or locality.
    Locality,
}

impl IdentifierKind {
    /// Every kind, in a fixed order (the order of `carrow_pid`'s arguments
    /// and of an identities plan's columns).
    pub const ALL: [IdentifierKind; 11] = [
        IdentifierKind::NhsNumber,
        IdentifierKind::NationalId,
        IdentifierKind::LocalId,
        IdentifierKind::FamilyName,
        IdentifierKind::GivenName,
        IdentifierKind::DateOfBirth,
        IdentifierKind::Sex,
        IdentifierKind::Postcode,
        IdentifierKind::PostalCode,
        IdentifierKind::Address,
        IdentifierKind::Locality,
    ];

    /// The kind's name in node configs and identities plans.
    pub fn name(self) -> &'static str {
        match self {
            IdentifierKind::NhsNumber => "nhs_number",
            IdentifierKind::NationalId => "national_id",
            IdentifierKind::LocalId => "local_id",
            IdentifierKind::FamilyName => "family_name",
            IdentifierKind::GivenName => "given_name",
            IdentifierKind::DateOfBirth => "date_of_birth",
            IdentifierKind::Sex => "sex",
            IdentifierKind::Postcode => "postcode",
            IdentifierKind::PostalCode => "postal_code",
            IdentifierKind::Address => "address",
            IdentifierKind::Locality => "locality",
        }
    }

    /// Position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Raw identifier values as a source holds them, one per kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawIdentity<'a> {
    pub nhs_number: Option<&'a str>,
    pub national_id: Option<&'a str>,
    pub local_id: Option<&'a str>,
    pub family_name: Option<&'a str>,
    pub given_name: Option<&'a str>,
    pub date_of_birth: Option<&'a str>,
    pub sex: Option<&'a str>,
    pub postcode: Option<&'a str>,
    pub postal_code: Option<&'a str>,
    pub address: Option<&'a str>,
    pub locality: Option<&'a str>,
}

impl<'a> RawIdentity<'a> {
    /// Sets the value of `kind`.
    pub fn set(&mut self, kind: IdentifierKind, value: Option<&'a str>) {
        let slot = match kind {
            IdentifierKind::NhsNumber => &mut self.nhs_number,
            IdentifierKind::NationalId => &mut self.national_id,
            IdentifierKind::LocalId => &mut self.local_id,
            IdentifierKind::FamilyName => &mut self.family_name,
            IdentifierKind::GivenName => &mut self.given_name,
            IdentifierKind::DateOfBirth => &mut self.date_of_birth,
            IdentifierKind::Sex => &mut self.sex,
            IdentifierKind::Postcode => &mut self.postcode,
            IdentifierKind::PostalCode => &mut self.postal_code,
            IdentifierKind::Address => &mut self.address,
            IdentifierKind::Locality => &mut self.locality,
        };
        *slot = value;
    }
}

/// A person's identifiers after normalisation; absent components are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub nhs_number: Option<NhsNumber>,
    pub national_id: Option<String>,
    pub local_id: Option<String>,
    pub family_name: Option<String>,
    pub given_name: Option<String>,
    pub date_of_birth: Option<BirthDate>,
    pub sex: Option<Sex>,
    /// A UK postcode, or else another country's postal code.
    pub postcode: Option<String>,
    /// Address words separated by single spaces.
    pub address: Option<String>,
    pub locality: Option<String>,
}

impl Identity {
    /// Normalises every component of a raw identity.
    pub fn normalise(raw: &RawIdentity<'_>) -> Self {
        let mut identity = Self::default();
        identity.renormalise(raw, Utc::now().date_naive());
        identity
    }

    /// Replaces this identity with the normalised `raw`, reusing the text
    /// buffers; `today` bounds dates of birth.
    pub fn renormalise(&mut self, raw: &RawIdentity<'_>, today: NaiveDate) {
        self.nhs_number = raw.nhs_number.and_then(normalise::nhs_number);
        self.national_id = raw.national_id.and_then(normalise::national_id);
        self.local_id = raw.local_id.and_then(normalise::local_id);
        set_name(&mut self.family_name, raw.family_name, NamePart::Family);
        set_name(&mut self.given_name, raw.given_name, NamePart::Given);
        self.date_of_birth = raw
            .date_of_birth
            .and_then(|d| normalise::date_of_birth_as_of(d, today));
        self.sex = raw.sex.and_then(normalise::sex);
        self.postcode = raw
            .postcode
            .and_then(normalise::postcode)
            .or_else(|| raw.postal_code.and_then(normalise::postal_code));
        self.address = raw.address.and_then(normalise::address);
        self.locality = raw.locality.and_then(normalise::locality);
    }
}

fn set_name(slot: &mut Option<String>, raw: Option<&str>, part: NamePart) {
    let mut buf = slot.take().unwrap_or_default();
    if let Some(raw) = raw
        && normalise::name_into(raw, part, &mut buf)
    {
        *slot = Some(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_in_index_order_and_named_as_configs_spell_them() {
        use serde::de::value::{Error, StrDeserializer};
        for (i, kind) in IdentifierKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
            let parsed = IdentifierKind::deserialize(StrDeserializer::<Error>::new(kind.name()));
            assert_eq!(parsed.unwrap(), kind);
        }
    }

    #[test]
    fn postal_code_is_used_when_there_is_no_uk_postcode() {
        let id = Identity::normalise(&RawIdentity {
            postal_code: Some(" 4223 "),
            address: Some("8 Stanley  St., Unit 2"),
            locality: Some("Winston Hills"),
            national_id: Some("530-4218"),
            ..Default::default()
        });
        assert_eq!(id.postcode.as_deref(), Some("4223"));
        assert_eq!(id.address.as_deref(), Some("8 STANLEY ST UNIT 2"));
        assert_eq!(id.locality.as_deref(), Some("WINSTONHILLS"));
        assert_eq!(id.national_id.as_deref(), Some("5304218"));
        let uk = Identity::normalise(&RawIdentity {
            postcode: Some("ls1 6ab"),
            postal_code: Some("4223"),
            ..Default::default()
        });
        assert_eq!(uk.postcode.as_deref(), Some("LS16AB"));
    }
}

/// Finds the NHS numbers a node's identities hold for more than one person:
/// the same number with birth dates further apart than a typo or a
/// day-month swap and given names that differ beyond a typo, nickname or
/// spelling. One of the records carries a relative's number by mistake, so
/// the number cannot be a `pid` at this node without making two people one.
#[derive(Debug, Default)]
pub struct SharedNumberFinder {
    /// Per number, the distinct (birth date, given name) it was seen with.
    details: std::collections::HashMap<NhsNumber, Vec<Details>>,
}

/// A birth date and a given name, as one identity holds them.
type Details = (Option<BirthDate>, Option<String>);

impl SharedNumberFinder {
    /// Notes one identity.
    pub fn add(&mut self, identity: &Identity) {
        let Some(n) = identity.nhs_number else {
            return;
        };
        let seen = self.details.entry(n).or_default();
        let (dob, given) = (identity.date_of_birth, identity.given_name.as_deref());
        if !seen.iter().any(|(d, g)| *d == dob && g.as_deref() == given) {
            seen.push((dob, given.map(str::to_string)));
        }
    }

    /// The numbers held for several people.
    pub fn finish(self) -> crate::token::SharedNumbers {
        self.details
            .into_iter()
            .filter(|(_, details)| {
                details.iter().enumerate().any(|(i, a)| {
                    details[i + 1..].iter().any(|b| {
                        dates_differ(a.0, b.0) && given_names_differ(a.1.as_deref(), b.1.as_deref())
                    })
                })
            })
            .map(|(n, _)| n)
            .collect()
    }
}

/// Both known and further apart than one digit, a day-month swap, or a
/// shared year or month-and-day.
fn dates_differ(a: Option<BirthDate>, b: Option<BirthDate>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    let digits_apart = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    digits_apart > 1 && a[..4] != b[..4] && a[4..] != b[4..]
}

/// Both known and neither equal, one edit apart, nor forms of one name.
fn given_names_differ(a: Option<&str>, b: Option<&str>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    a != b
        && !within_one_edit(a, b)
        && normalise::given_name_canonical(a) != normalise::given_name_canonical(b)
}

/// Whether one substitution, insertion, deletion or swap of neighbours
/// turns `a` into `b`.
fn within_one_edit(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let deletions = |s: &[u8]| -> Vec<Vec<u8>> {
        (0..s.len())
            .map(|i| [&s[..i], &s[i + 1..]].concat())
            .chain(std::iter::once(s.to_vec()))
            .collect()
    };
    let (da, db) = (deletions(a), deletions(b));
    da.iter().any(|x| db.contains(x))
}

#[cfg(test)]
mod shared_number_tests {
    use super::*;

    fn identity(given: &str, dob: &str) -> Identity {
        Identity::normalise(&RawIdentity {
            nhs_number: Some("9434765919"),
            given_name: Some(given),
            date_of_birth: Some(dob),
            ..Default::default()
        })
    }

    #[test]
    fn a_number_on_two_people_is_found_and_typos_nicknames_and_swaps_are_not_two_people() {
        let mut finder = SharedNumberFinder::default();
        for (given, dob) in [
            ("William", "1950-03-04"),
            ("Bill", "1950-04-03"),
            ("Wiliam", "1950-03-05"),
        ] {
            finder.add(&identity(given, dob));
        }
        assert!(finder.finish().is_empty());
        let mut finder = SharedNumberFinder::default();
        finder.add(&identity("William", "1950-03-04"));
        finder.add(&identity("Susan", "1978-11-20"));
        assert_eq!(finder.finish().len(), 1);
    }
}

//! Identifier normalisation: one versioned rule set shared by every node.
//!
//! Every function returns `None` when the value is missing, a placeholder or
//! invalid. A missing component yields no token; it is never hashed as an empty
//! string. Each normaliser is idempotent: normalising its own output gives the
//! same output.

use chrono::{Datelike, NaiveDate, Utc};

/// Version of the normalisation rules. Nodes that disagree on it cannot link,
/// so it is part of every derived key's context.
pub const RULES_VERSION: u32 = 1;

/// The earliest date of birth accepted; earlier dates are data-entry errors.
pub const EARLIEST_BIRTH_YEAR: i32 = 1900;

/// A validated 10-digit NHS number, as ASCII digits.
pub type NhsNumber = [u8; 10];

/// Validates an NHS number: digits only (spaces and hyphens allowed as
/// separators), exactly 10 of them, and a correct modulus-11 check digit.
/// Numbers of one repeated digit are test placeholders and are rejected.
pub fn nhs_number(raw: &str) -> Option<NhsNumber> {
    let mut digits = [0u8; 10];
    let mut n = 0;
    for b in raw.bytes() {
        match b {
            b'0'..=b'9' => {
                if n == 10 {
                    return None;
                }
                digits[n] = b;
                n += 1;
            }
            b' ' | b'-' | b'\t' => {}
            _ => return None,
        }
    }
    if n != 10 || digits.iter().all(|&d| d == digits[0]) {
        return None;
    }
    (nhs_check_digit(&digits) == Some(digits[9] - b'0')).then_some(digits)
}

/// The modulus-11 check digit for the first nine digits, or `None` when the
/// computation gives 10 (such numbers are never issued).
pub fn nhs_check_digit(digits: &[u8]) -> Option<u8> {
    let sum: u32 = digits[..9]
        .iter()
        .zip((2..=10u32).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

/// Titles and suffixes dropped from names (a `match` compiles to a length
/// switch, cheaper per row than scanning a list).
fn is_title_or_suffix(word: &str) -> bool {
    matches!(
        word,
        "MR" | "MRS"
            | "MS"
            | "MISS"
            | "MX"
            | "DR"
            | "PROF"
            | "SIR"
            | "DAME"
            | "REV"
            | "LADY"
            | "LORD"
            | "JR"
            | "SR"
            | "II"
            | "III"
            | "IV"
            | "PHD"
            | "MD"
            | "ESQ"
    )
}

/// Values that stand for a missing name.
fn is_placeholder(name: &str) -> bool {
    matches!(
        name,
        "UNKNOWN"
            | "NOTKNOWN"
            | "UNK"
            | "NK"
            | "NA"
            | "NONE"
            | "NULL"
            | "TEST"
            | "TESTPATIENT"
            | "PATIENT"
            | "ANONYMOUS"
            | "ZZZTRASH"
            | "XXX"
            | "XXXX"
            | "BABY"
            | "INFANT"
    )
}

/// Which part of a name is normalised; family names need two letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamePart {
    Family,
    Given,
}

/// Normalises a name: Unicode NFKD with accents stripped, upper case, letters
/// A-Z only, titles and suffixes dropped. Placeholders such as `UNKNOWN` and
/// one-letter family names are rejected.
pub fn name(raw: &str, part: NamePart) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    name_into(raw, part, &mut out).then_some(out)
}

/// [`name`] writing into `out` (cleared first), so a batch can reuse one
/// buffer. Returns whether the name is valid.
pub fn name_into(raw: &str, part: NamePart, out: &mut String) -> bool {
    out.clear();
    let end_word = |out: &mut String, start: usize| {
        if is_title_or_suffix(&out[start..]) {
            out.truncate(start);
        }
    };
    if raw.is_ascii() {
        // Most names: no decoding, no decomposition.
        let is_separator = |b: &u8| b.is_ascii_whitespace() || *b == b',' || *b == b'.';
        for word in raw.as_bytes().split(is_separator) {
            let start = out.len();
            out.extend(
                word.iter()
                    .filter(|b| b.is_ascii_alphabetic())
                    .map(|b| b.to_ascii_uppercase() as char),
            );
            end_word(out, start);
        }
    } else {
        for word in raw.split(|c: char| c.is_whitespace() || c == ',' || c == '.') {
            let start = out.len();
            fold_to_ascii_letters(word, out);
            end_word(out, start);
        }
    }
    let min_len = match part {
        NamePart::Family => 2,
        NamePart::Given => 1,
    };
    let joined = out.as_str();
    !(joined.len() < min_len || is_placeholder(joined) || is_title_or_suffix(joined))
}

/// Appends the upper-case A-Z letters of `word` to `out`, with accents
/// stripped and letters that do not decompose (Æ, Ø, ß, Ł ...) spelled out.
fn fold_to_ascii_letters(word: &str, out: &mut String) {
    for c in word.chars() {
        fold_char_to_ascii_letters(c, out);
    }
}

/// [`fold_to_ascii_letters`] for one character.
fn fold_char_to_ascii_letters(c: char, out: &mut String) {
    if c.is_ascii() {
        push_ascii_letter(c, out);
    } else {
        match c {
            'æ' | 'Æ' => out.push_str("AE"),
            'œ' | 'Œ' => out.push_str("OE"),
            'ø' | 'Ø' => out.push('O'),
            'ß' => out.push_str("SS"),
            'ł' | 'Ł' => out.push('L'),
            'đ' | 'Đ' => out.push('D'),
            'þ' | 'Þ' => out.push_str("TH"),
            'ı' => out.push('I'),
            _ => {
                unicode_normalization::char::decompose_compatible(c, |d| push_ascii_letter(d, out))
            }
        }
    }
}

fn push_ascii_letter(c: char, out: &mut String) {
    if c.is_ascii_alphabetic() {
        out.push(c.to_ascii_uppercase());
    }
}

/// Nicknames and spellings of given names, with the form they are
/// compared in (normalised). A record holding `BILL` and one holding
/// `WILLIAM` agree on the canonical given name. The list is the common
/// English, Welsh, Irish and South Asian forms seen in NHS records.
const GIVEN_NAME_FORMS: &[(&str, &[&str])] = &[
    ("WILLIAM", &["BILL", "BILLY", "WILL", "WILLIE", "LIAM"]),
    ("ROBERT", &["BOB", "BOBBY", "ROB", "ROBBIE", "BERT"]),
    (
        "MARGARET",
        &["MAGGIE", "PEGGY", "MEG", "MAGGY", "MADGE", "MARGARETTA"],
    ),
    (
        "ELIZABETH",
        &["LIZ", "LIZZIE", "BETH", "BETTY", "BESS", "ELIZA", "LIBBY"],
    ),
    ("JAMES", &["JIM", "JIMMY", "JAMIE"]),
    ("MICHAEL", &["MIKE", "MICK", "MICKY"]),
    ("THOMAS", &["TOM", "TOMMY"]),
    ("RICHARD", &["RICK", "RICKY", "DICK", "RICHIE"]),
    ("CHRISTOPHER", &["CHRIS", "KIT"]),
    ("DANIEL", &["DAN", "DANNY"]),
    ("MATTHEW", &["MATT"]),
    ("STEPHEN", &["STEVE", "STEVEN", "STEVIE"]),
    ("ANDREW", &["ANDY", "DREW"]),
    ("PETER", &["PETE"]),
    ("KENNETH", &["KEN", "KENNY"]),
    ("DAVID", &["DAVE", "DAVY"]),
    ("ANTHONY", &["TONY"]),
    ("EDWARD", &["ED", "EDDIE", "TED", "TEDDY", "NED"]),
    ("PATRICIA", &["PAT", "PATSY", "TRISH", "TRICIA"]),
    ("SUSAN", &["SUE", "SUSIE", "SUZY"]),
    ("DOROTHY", &["DOT", "DOTTIE", "DOLLY"]),
    ("JOANNE", &["JO", "JOANNA"]),
    ("NICOLA", &["NICKY", "NIKKI"]),
    ("ISABELLA", &["BELLA", "IZZY", "ISOBEL", "ISABEL"]),
    ("OLIVER", &["OLLIE"]),
    ("AMELIA", &["MILLIE"]),
    ("SOPHIA", &["SOPHIE", "SOFIA"]),
    ("MOHAMMED", &["MUHAMMAD", "MOHAMMAD", "MOHAMED", "MUHAMMED"]),
    ("SEAN", &["SHAUN", "SHAWN"]),
    (
        "CATHERINE",
        &["KATHERINE", "CATHY", "KATE", "KATIE", "KATHRYN"],
    ),
    ("MARK", &["MARC"]),
    ("CLAIRE", &["CLARE"]),
    ("AISHA", &["AYESHA"]),
    ("JOSEPH", &["JOE", "JOEY"]),
    ("SAMUEL", &["SAM", "SAMMY"]),
    ("ALEXANDER", &["ALEX", "SANDY"]),
    ("BENJAMIN", &["BEN", "BENNY"]),
    ("JENNIFER", &["JENNY", "JEN"]),
    ("DEBORAH", &["DEBBIE", "DEBRA"]),
    ("REBECCA", &["BECKY", "BECCA"]),
];

/// The form a normalised given name is compared in: the full name for a
/// known nickname or spelling (`BILL` gives `WILLIAM`), else the name itself.
pub fn given_name_canonical(normalised: &str) -> &str {
    GIVEN_NAME_FORMS
        .iter()
        .find(|(full, forms)| *full == normalised || forms.contains(&normalised))
        .map_or(normalised, |(full, _)| full)
}

/// A normalised date of birth as `YYYYMMDD` ASCII digits.
pub type BirthDate = [u8; 8];

/// Parses a date of birth in common formats (`YYYY-MM-DD`, `YYYYMMDD`,
/// `DD/MM/YYYY`, `DD-MM-YYYY`, `DD.MM.YYYY`, `YYYY/MM/DD`, `DD Mon YYYY`),
/// rejecting impossible dates, dates before 1900 and dates after today.
pub fn date_of_birth(raw: &str) -> Option<BirthDate> {
    date_of_birth_as_of(raw, Utc::now().date_naive())
}

/// [`date_of_birth`] with an explicit "today", for reproducible tests.
pub fn date_of_birth_as_of(raw: &str, today: NaiveDate) -> Option<BirthDate> {
    let raw = raw.trim();
    // The common shapes are checked without building a date: this runs once
    // per row in batch tokenisation.
    if let Some((y, m, d)) = common_date_parts(raw.as_bytes()) {
        let valid = (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m);
        let in_range = y >= EARLIEST_BIRTH_YEAR as u32
            && (y, m, d) <= (today.year() as u32, today.month(), today.day());
        return (valid && in_range).then(|| ymd_digits(y, m, d));
    }
    let date = parse_date(raw)?;
    if date.year() < EARLIEST_BIRTH_YEAR || date > today {
        return None;
    }
    Some(birth_date_digits(date))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        _ => 31,
    }
}

/// The `YYYYMMDD` digits of a date (years 1000 to 9999).
pub fn birth_date_digits(date: NaiveDate) -> BirthDate {
    ymd_digits(date.year() as u32, date.month(), date.day())
}

fn ymd_digits(year: u32, month: u32, day: u32) -> BirthDate {
    let mut out = [0u8; 8];
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(4, 2, month);
    put(6, 2, day);
    out
}

/// Parses `digits` as a decimal number when it is 1 to 4 ASCII digits.
fn small_number(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// Year, month and day of the common shapes `YYYY-MM-DD` and `DD/MM/YYYY`,
/// unvalidated, without allocating.
fn common_date_parts(b: &[u8]) -> Option<(u32, u32, u32)> {
    if b.len() != 10 {
        return None;
    }
    let (y, m, d) = match (b[4], b[7], b[2], b[5]) {
        (b'-', b'-', _, _) => (&b[0..4], &b[5..7], &b[8..10]),
        (_, _, b'/', b'/') => (&b[6..10], &b[3..5], &b[0..2]),
        _ => return None,
    };
    Some((small_number(y)?, small_number(m)?, small_number(d)?))
}

/// The common shapes as a date.
fn parse_common_date(b: &[u8]) -> Option<NaiveDate> {
    let (y, m, d) = common_date_parts(b)?;
    NaiveDate::from_ymd_opt(y as i32, m, d)
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = strip_time_of_day(s);
    if let Some(date) = parse_common_date(s.as_bytes()) {
        return Some(date);
    }
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        return ymd(&s[0..4], &s[4..6], &s[6..8]);
    }
    if let Some(d) = parse_month_name(s) {
        return Some(d);
    }
    let parts: Vec<&str> = s.split(['-', '/', '.']).collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    match (parts[0].len(), parts[2].len()) {
        (4, 1..=2) => ymd(parts[0], parts[1], parts[2]),
        (1..=2, 4) => ymd(parts[2], parts[1], parts[0]),
        _ => None,
    }
}

/// Date-times from some systems (`1950-02-03T00:00:00`, `03/02/1950 00:00`):
/// keeps the ten-character date part only.
fn strip_time_of_day(s: &str) -> &str {
    let b = s.as_bytes();
    let date_part_numeric = b.len() > 10
        && b[..10]
            .iter()
            .all(|c| c.is_ascii_digit() || b"-/.".contains(c));
    if date_part_numeric && matches!(b[10], b'T' | b' ') {
        &s[..10]
    } else {
        s
    }
}

fn parse_month_name(s: &str) -> Option<NaiveDate> {
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    let parts: Vec<&str> = s.split([' ', '-']).filter(|p| !p.is_empty()).collect();
    if parts.len() != 3 || parts[2].len() != 4 {
        return None;
    }
    let month_word = parts[1].to_ascii_uppercase();
    let month = MONTHS.iter().position(|m| month_word.starts_with(m))? + 1;
    ymd(parts[2], &month.to_string(), parts[0])
}

fn ymd(y: &str, m: &str, d: &str) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
}

/// Administrative sex as used in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
}

impl Sex {
    /// The one-letter code hashed into tokens.
    pub fn code(self) -> &'static str {
        match self {
            Sex::Male => "M",
            Sex::Female => "F",
        }
    }
}

/// Maps M/F, MALE/FEMALE and the NHS codes 1/2 to a sex; anything else (9,
/// X, unknown, not specified) is missing.
pub fn sex(raw: &str) -> Option<Sex> {
    let code = raw.trim();
    let is = |word: &str| code.eq_ignore_ascii_case(word);
    if is("M") || is("MALE") || code == "1" {
        Some(Sex::Male)
    } else if is("F") || is("FEMALE") || code == "2" {
        Some(Sex::Female)
    } else {
        None
    }
}

/// Normalises a UK postcode: upper case, no spaces, validated against the
/// shape `A[A]9[A9]9AA`.
pub fn postcode(raw: &str) -> Option<String> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    is_valid_postcode(compact.as_bytes()).then_some(compact)
}

/// The postcode sector (outward code and the inward digit) of a normalised
/// postcode, e.g. `LS16AB` gives `LS16`.
pub fn postcode_sector(normalised: &str) -> Option<&str> {
    is_valid_postcode(normalised.as_bytes()).then(|| &normalised[..normalised.len() - 2])
}

fn is_valid_postcode(p: &[u8]) -> bool {
    if !(5..=7).contains(&p.len()) {
        return false;
    }
    let (outward, inward) = p.split_at(p.len() - 3);
    let inward_ok = inward[0].is_ascii_digit()
        && inward[1].is_ascii_uppercase()
        && inward[2].is_ascii_uppercase();
    let area_len = outward
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    let district = &outward[area_len..];
    let outward_ok = (1..=2).contains(&area_len)
        && !district.is_empty()
        && district.len() <= 2
        && district[0].is_ascii_digit()
        && district
            .get(1)
            .is_none_or(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    inward_ok && outward_ok
}

/// Normalises another national identifier: letters and digits only, upper
/// case (separators dropped), 4 to 20 of them, not one repeated character.
pub fn national_id(raw: &str) -> Option<String> {
    let compact: String = raw
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let repeated = compact.bytes().all(|b| Some(b) == compact.bytes().next());
    ((4..=20).contains(&compact.len()) && !repeated).then_some(compact)
}

/// Normalises a local record number: trimmed, kept as written (local
/// numbering may be case-sensitive); at most 128 bytes.
pub fn local_id(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    (!trimmed.is_empty() && trimmed.len() <= 128).then(|| trimmed.to_string())
}

/// Normalises a postal code of any country: letters and digits, upper case,
/// 3 to 10 of them. A valid UK postcode comes out as [`postcode`] gives it.
pub fn postal_code(raw: &str) -> Option<String> {
    if let Some(uk) = postcode(raw) {
        return Some(uk);
    }
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid =
        (3..=10).contains(&compact.len()) && compact.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(compact)
}

/// Normalises address lines: words of upper-case letters and digits (accents
/// stripped, punctuation splitting words) joined by single spaces.
pub fn address(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    for word in raw.split(|c: char| !c.is_alphanumeric()) {
        let start = out.len();
        if start > 0 {
            out.push(' ');
        }
        for c in word.chars() {
            if c.is_ascii_digit() {
                out.push(c);
            } else {
                fold_char_to_ascii_letters(c, &mut out);
            }
        }
        if out.len() == start + usize::from(start > 0) {
            out.truncate(start);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Normalises a town, suburb or locality: upper-case letters and digits,
/// spaces and punctuation dropped (as names), at least two characters.
pub fn locality(raw: &str) -> Option<String> {
    let words = address(raw)?;
    let compact: String = words.chars().filter(|c| *c != ' ').collect();
    (compact.len() >= 2 && !is_placeholder(&compact)).then_some(compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_published_examples() {
        // NHS Data Dictionary example and a widely used test number.
        assert_eq!(nhs_number("943 476 5919"), Some(*b"9434765919"));
        assert_eq!(nhs_number("4010232137"), Some(*b"4010232137"));
        assert_eq!(nhs_number("943-476-5919"), Some(*b"9434765919"));
        // Wrong check digit, wrong length, letters, placeholder.
        assert_eq!(nhs_number("9434765918"), None);
        assert_eq!(nhs_number("943476591"), None);
        assert_eq!(nhs_number("94347659190"), None);
        assert_eq!(nhs_number("94347A5919"), None);
        assert_eq!(nhs_number("0000000000"), None);
        assert_eq!(nhs_number(""), None);
    }

    #[test]
    fn check_digit_ten_is_never_issued() {
        // 1000000010: sum of weights gives remainder 1, so check would be 10.
        let digits = b"100000001";
        let sum: u32 = 10 + 2;
        assert_eq!(11 - sum % 11, 10);
        assert_eq!(nhs_check_digit(digits), None);
    }

    #[test]
    fn names() {
        assert_eq!(name("O'Brien", NamePart::Family).as_deref(), Some("OBRIEN"));
        assert_eq!(name("  José  ", NamePart::Given).as_deref(), Some("JOSE"));
        assert_eq!(name("Łukasz", NamePart::Given).as_deref(), Some("LUKASZ"));
        assert_eq!(
            name("Smith-Jones", NamePart::Family).as_deref(),
            Some("SMITHJONES")
        );
        assert_eq!(name("Dr John", NamePart::Given).as_deref(), Some("JOHN"));
        assert_eq!(
            name("Smith Jr.", NamePart::Family).as_deref(),
            Some("SMITH")
        );
        assert_eq!(name("Ærø", NamePart::Family).as_deref(), Some("AERO"));
        assert_eq!(name("UNKNOWN", NamePart::Family), None);
        assert_eq!(name("Not Known", NamePart::Given), None);
        assert_eq!(name("n/a", NamePart::Family), None);
        assert_eq!(name("X", NamePart::Family), None);
        assert_eq!(name("J", NamePart::Given).as_deref(), Some("J"));
        assert_eq!(name("", NamePart::Given), None);
        assert_eq!(name("D R", NamePart::Family), None);
    }

    #[test]
    fn dates_of_birth() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let dob = |s: &str| date_of_birth_as_of(s, today);
        for s in [
            "1950-02-03",
            "19500203",
            "03/02/1950",
            "3/2/1950",
            "03-02-1950",
            "03.02.1950",
            "1950/02/03",
            "03 Feb 1950",
            "3-FEB-1950",
            "1950-02-03T00:00:00",
            "1950-02-03 00:00:00",
        ] {
            assert_eq!(dob(s), Some(*b"19500203"), "{s}");
        }
        assert_eq!(dob("1965-02-31"), None, "impossible date");
        for (leap, valid) in [
            ("2000-02-29", true),
            ("1900-02-29", false),
            ("2024-02-29", true),
            ("2023-02-29", false),
        ] {
            assert_eq!(dob(leap).is_some(), valid, "{leap}");
            let slashed = format!("{}/{}/{}", &leap[8..10], &leap[5..7], &leap[0..4]);
            assert_eq!(dob(&slashed).is_some(), valid, "{slashed}");
        }
        assert_eq!(dob("1950-13-01"), None, "month 13");
        assert_eq!(dob("1950-04-31"), None, "April has 30 days");
        assert_eq!(
            dob("2026-11-23"),
            Some(*b"20261123"),
            "today is not the future"
        );
        assert_eq!(dob("2026-11-24"), None, "tomorrow is");
        assert_eq!(dob("2027-01-01"), None, "future date");
        assert_eq!(dob("1899-12-31"), None, "too early");
        assert_eq!(dob("03/02/50"), None, "two-digit year is ambiguous");
        assert_eq!(dob("not a date"), None);
        assert_eq!(dob(""), None);
    }

    #[test]
    fn sex_codes() {
        assert_eq!(sex("m"), Some(Sex::Male));
        assert_eq!(sex("1"), Some(Sex::Male));
        assert_eq!(sex("Female"), Some(Sex::Female));
        assert_eq!(sex("2"), Some(Sex::Female));
        assert_eq!(sex("9"), None);
        assert_eq!(sex("X"), None);
        assert_eq!(sex(""), None);
    }

    #[test]
    fn postcodes() {
        assert_eq!(postcode("ls1 6ab").as_deref(), Some("LS16AB"));
        assert_eq!(postcode("M1 1AE").as_deref(), Some("M11AE"));
        assert_eq!(postcode("EC1A 1BB").as_deref(), Some("EC1A1BB"));
        assert_eq!(postcode("W1A 0AX").as_deref(), Some("W1A0AX"));
        assert_eq!(postcode("B33 8TH").as_deref(), Some("B338TH"));
        assert_eq!(postcode("LS1 6A"), None);
        assert_eq!(postcode("1S1 6AB"), None);
        assert_eq!(postcode("LSX 6AB"), None);
        assert_eq!(postcode(""), None);
        assert_eq!(postcode_sector("LS16AB"), Some("LS16"));
        assert_eq!(postcode_sector("EC1A1BB"), Some("EC1A1"));
        assert_eq!(postcode_sector("nonsense"), None);
    }

    #[test]
    fn other_identifiers() {
        assert_eq!(national_id("530 4218").as_deref(), Some("5304218"));
        assert_eq!(national_id("ab-12-cd").as_deref(), Some("AB12CD"));
        assert_eq!(national_id("0000000"), None, "placeholder");
        assert_eq!(national_id("12"), None, "too short");
        assert_eq!(local_id("  H12345 ").as_deref(), Some("H12345"));
        assert_eq!(local_id("   "), None);
        assert_eq!(postal_code("4223").as_deref(), Some("4223"));
        assert_eq!(postal_code("ls1 6ab").as_deref(), Some("LS16AB"));
        assert_eq!(postal_code("90210-1234").as_deref(), Some("902101234"));
        assert_eq!(postal_code("42"), None);
        assert_eq!(postal_code("4,223"), None);
        assert_eq!(
            address(" 12a  Rue de l'Église, Flat 3 ").as_deref(),
            Some("12A RUE DE L EGLISE FLAT 3")
        );
        assert_eq!(address(" ,. "), None);
        assert_eq!(locality("North  Ryde").as_deref(), Some("NORTHRYDE"));
        assert_eq!(locality("unknown"), None);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn name_normalisation_is_idempotent(s in "\\PC{0,20}") {
                for part in [NamePart::Family, NamePart::Given] {
                    if let Some(n) = name(&s, part) {
                        prop_assert_eq!(name(&n, part), Some(n.clone()));
                        prop_assert!(n.bytes().all(|b| b.is_ascii_uppercase()));
                    }
                }
            }

            #[test]
            fn date_normalisation_is_idempotent(y in 1890i32..2030, m in 1u32..13, d in 1u32..32, fmt in 0usize..4) {
                let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
                let raw = match fmt {
                    0 => format!("{y:04}-{m:02}-{d:02}"),
                    1 => format!("{d}/{m}/{y}"),
                    2 => format!("{d:02}.{m:02}.{y}"),
                    _ => format!("{y}{m:02}{d:02}"),
                };
                if let Some(out) = date_of_birth_as_of(&raw, today) {
                    let text = std::str::from_utf8(&out).unwrap();
                    prop_assert_eq!(date_of_birth_as_of(text, today), Some(out));
                }
            }

            #[test]
            fn nhs_and_postcode_normalisation_is_idempotent(digits in "[0-9 ]{8,13}", pc in "[A-Za-z]{1,2}[0-9][A-Za-z0-9]? ?[0-9][A-Za-z]{2}") {
                if let Some(n) = nhs_number(&digits) {
                    prop_assert_eq!(nhs_number(std::str::from_utf8(&n).unwrap()), Some(n));
                }
                if let Some(p) = postcode(&pc) {
                    prop_assert_eq!(postcode(&p), Some(p.clone()));
                }
            }

            #[test]
            fn sex_normalisation_is_idempotent(s in "[MFmf12X9 ]{0,3}|male|female") {
                if let Some(x) = sex(&s) {
                    prop_assert_eq!(sex(x.code()), Some(x));
                }
            }
        }
    }
}

//! The three organisations' local data, each in its own local schema, as a
//! real area would hold it: a hospital trust's patient administration system,
//! GP practices' clinical system, and a council's adult social care system.

use arrow_schema::DataType::{Date32 as D, Float64 as F, Int64 as I, Utf8 as S};
use chrono::{Duration, NaiveDate};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use crate::population::{Population, Sex};
use crate::table::{Cell, Table};

/// Share of hospital patients whose NHS number is missing.
pub const ACUTE_MISSING_NHS_SHARE: f64 = 0.02;
/// Share of council clients whose NHS number is missing.
pub const COUNCIL_MISSING_NHS_SHARE: f64 = 0.15;

/// How carefully an organisation keeps a person's identifiers up to date.
/// The GP practice holds them as the person is now; the hospital and the
/// council hold older or less careful copies, at these rates (of records).
#[derive(Debug, Clone, Copy)]
pub struct Care {
    /// NHS number missing.
    pub missing_nhs: f64,
    /// NHS number with one digit mistyped.
    pub mistyped_nhs: f64,
    /// A household member's NHS number instead of the person's own.
    pub relatives_nhs: f64,
    /// The maiden name, for people who changed their family name on marriage.
    pub maiden_name: f64,
    /// A nickname or another spelling of the given name, where one exists.
    pub given_variant: f64,
    /// Day and month of the birth date swapped (days up to 12).
    pub day_month_swap: f64,
    /// The address before a recent move, for people who moved.
    pub previous_address: f64,
}

/// The GP practice: current identifiers, always an NHS number.
pub const GP_CARE: Care = Care {
    missing_nhs: 0.0,
    mistyped_nhs: 0.0,
    relatives_nhs: 0.0,
    maiden_name: 0.0,
    given_variant: 0.0,
    day_month_swap: 0.0,
    previous_address: 0.0,
};
/// The hospital trust's patient administration system.
pub const ACUTE_CARE: Care = Care {
    missing_nhs: ACUTE_MISSING_NHS_SHARE,
    mistyped_nhs: 0.005,
    relatives_nhs: 0.002,
    maiden_name: 0.25,
    given_variant: 0.05,
    day_month_swap: 0.01,
    previous_address: 0.5,
};
/// The council's adult social care system (also with name typos).
pub const COUNCIL_CARE: Care = Care {
    missing_nhs: COUNCIL_MISSING_NHS_SHARE,
    mistyped_nhs: 0.01,
    relatives_nhs: 0.003,
    maiden_name: 0.25,
    given_variant: 0.05,
    day_month_swap: 0.02,
    previous_address: 0.5,
};

/// Nicknames and other spellings of given names as records carry them.
const GIVEN_VARIANTS: &[(&str, &[&str])] = &[
    ("William", &["Bill", "Will", "Billy"]),
    ("Robert", &["Bob", "Rob", "Bobby"]),
    ("Margaret", &["Maggie", "Peggy", "Meg"]),
    ("Elizabeth", &["Liz", "Beth", "Betty"]),
    ("James", &["Jim", "Jimmy", "Jamie"]),
    ("Michael", &["Mike", "Mick"]),
    ("Thomas", &["Tom", "Tommy"]),
    ("Richard", &["Rick", "Dick", "Richie"]),
    ("Christopher", &["Chris", "Kit"]),
    ("Daniel", &["Dan", "Danny"]),
    ("Matthew", &["Matt"]),
    ("Stephen", &["Steve", "Steven"]),
    ("Andrew", &["Andy", "Drew"]),
    ("Peter", &["Pete"]),
    ("Kenneth", &["Ken", "Kenny"]),
    ("David", &["Dave", "Davy"]),
    ("Patricia", &["Pat", "Trish"]),
    ("Susan", &["Sue", "Susie"]),
    ("Dorothy", &["Dot", "Dolly"]),
    ("Joanne", &["Jo"]),
    ("Nicola", &["Nicky", "Nikki"]),
    ("Isabella", &["Bella", "Izzy", "Isobel"]),
    ("Oliver", &["Ollie"]),
    ("Amelia", &["Millie"]),
    ("Sophia", &["Sophie", "Sofia"]),
    ("Muhammad", &["Mohammed", "Mohammad"]),
    ("Mohammed", &["Muhammad", "Mohamed"]),
    ("Seán", &["Shaun", "Sean"]),
    ("Mark", &["Marc"]),
    ("Claire", &["Clare"]),
    ("Aisha", &["Ayesha"]),
    ("Zoë", &["Zoe"]),
    ("Chloé", &["Chloe"]),
    ("Niamh", &["Neve"]),
    ("Karen", &["Caren"]),
];

/// A person's identifiers as one organisation holds them.
struct Held {
    nhs: Option<String>,
    family: String,
    given: String,
    dob: NaiveDate,
    address: String,
    postcode: String,
}

/// The identifiers of person `index` as an organisation with `care` holds them.
fn held(rng: &mut ChaCha8Rng, pop: &Population, index: usize, care: &Care) -> Held {
    let person = &pop.people[index];
    let relatives: Vec<usize> = person.relatives(index, pop).collect();
    let nhs = if rng.random_bool(care.missing_nhs) {
        None
    } else if !relatives.is_empty() && rng.random_bool(care.relatives_nhs) {
        let relative = relatives.choose(rng).expect("non-empty");
        Some(pop.people[*relative].nhs_number.clone())
    } else if rng.random_bool(care.mistyped_nhs) {
        Some(mistype_digit(rng, &person.nhs_number))
    } else {
        Some(person.nhs_number.clone())
    };
    let family = match &person.maiden_name {
        Some(maiden) if rng.random_bool(care.maiden_name) => maiden.clone(),
        _ => person.family_name.clone(),
    };
    let given = match GIVEN_VARIANTS
        .iter()
        .find(|(formal, _)| *formal == person.given_name)
    {
        Some((_, variants)) if rng.random_bool(care.given_variant) => {
            variants.choose(rng).expect("non-empty").to_string()
        }
        _ => person.given_name.clone(),
    };
    let dob = if rng.random_bool(care.day_month_swap) {
        swap_day_month(person.date_of_birth)
    } else {
        person.date_of_birth
    };
    let (address, postcode) = match &person.previous {
        Some(before) if rng.random_bool(care.previous_address) => {
            (before.address.clone(), before.postcode.clone())
        }
        _ => (person.address.clone(), person.postcode.clone()),
    };
    Held {
        nhs,
        family,
        given,
        dob,
        address,
        postcode,
    }
}

/// An NHS number with one digit changed (usually failing its check digit).
fn mistype_digit(rng: &mut ChaCha8Rng, nhs: &str) -> String {
    let mut digits: Vec<u8> = nhs.bytes().collect();
    let at = rng.random_range(0..digits.len());
    let old = digits[at];
    while digits[at] == old {
        digits[at] = b'0' + rng.random_range(0..10);
    }
    String::from_utf8(digits).expect("digits")
}

/// The date with day and month swapped, when the day can be a month.
fn swap_day_month(dob: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&dob),
        chrono::Datelike::day(&dob),
        chrono::Datelike::month(&dob),
    )
    .unwrap_or(dob)
}

/// One organisation's generated data.
pub struct Organisation {
    /// Node name (`acute`, `gp`, `council`).
    pub name: &'static str,
    /// Local tables.
    pub tables: Vec<Table>,
    /// Ground truth: (table, local record id, person id) for each person record.
    pub records: Vec<(&'static str, String, String)>,
}

/// ICD-10 primary diagnoses with their weight among emergency admissions of
/// older people.
const DIAGNOSES: &[(&str, u32)] = &[
    ("J18.9", 12), // pneumonia
    ("N39.0", 10), // urinary tract infection
    ("S72.0", 6),  // fracture of neck of femur
    ("I50.9", 8),  // heart failure
    ("J44.1", 8),  // COPD with exacerbation
    ("I21.9", 5),  // myocardial infarction
    ("I63.9", 5),  // stroke
    ("R55", 6),    // syncope and collapse
    ("F03", 3),    // dementia
    ("K80.2", 4),  // gallstones
    ("M17.1", 6),  // knee osteoarthritis (elective)
    ("H25.9", 8),  // cataract (elective)
    ("C18.9", 3),  // colon cancer
    ("O80", 6),    // delivery
    ("R10.4", 10), // abdominal pain
];

/// Long-term conditions recorded in primary care: name, SNOMED CT code,
/// prevalence at 40 and at 80.
const CONDITIONS: &[(&str, &str, f64, f64)] = &[
    ("hypertension", "38341003", 0.12, 0.55),
    ("diabetes", "44054006", 0.05, 0.18),
    ("asthma", "195967001", 0.08, 0.07),
    ("copd", "13645005", 0.01, 0.10),
    ("heart_failure", "84114007", 0.003, 0.08),
    ("ckd", "709044004", 0.01, 0.20),
    ("dementia", "52448006", 0.0, 0.12),
];

const SERVICES: &[(&str, f64, f64)] = &[
    // service type, typical weekly cost, spread
    ("Home Care", 320.0, 120.0),
    ("Reablement", 250.0, 60.0),
    ("Residential", 850.0, 150.0),
    ("Nursing", 1100.0, 200.0),
    ("Day Care", 140.0, 40.0),
];

fn weighted<'a>(rng: &mut ChaCha8Rng, items: &'a [(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|i| i.1).sum();
    let mut pick = rng.random_range(0..total);
    for (v, w) in items {
        if pick < *w {
            return v;
        }
        pick -= w;
    }
    items[0].0
}

fn random_date(rng: &mut ChaCha8Rng, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    from + Duration::days(rng.random_range(0..=(to - from).num_days().max(0)))
}

/// The hospital trust: a patient index and admitted patient care spells.
pub fn acute(rng: &mut ChaCha8Rng, pop: &Population, as_of: NaiveDate) -> Organisation {
    let mut patients = Table::new(
        "pas_patients",
        &[
            ("PATIENT_ID", S),
            ("NHS_NO", S),
            ("SURNAME", S),
            ("FORENAME", S),
            ("DOB", D),
            ("GENDER", S),
            ("ADDRESS_LINE_1", S),
            ("POSTCODE", S),
            ("LSOA", S),
            ("IMD_DECILE", I),
            ("DATA_OPT_OUT", S),
        ],
    );
    let mut spells = Table::new(
        "apc_spells",
        &[
            ("SPELL_ID", S),
            ("PATIENT_ID", S),
            ("ADMISSION_DATE", D),
            ("DISCHARGE_DATE", D),
            ("ADMISSION_METHOD", S),
            ("PRIMARY_DIAGNOSIS", S),
        ],
    );
    let mut org = Organisation {
        name: "acute",
        tables: vec![],
        records: vec![],
    };
    let window_start = as_of - Duration::days(730);
    for (index, person) in pop.people.iter().enumerate() {
        // Expected admissions over two years rise steeply with frailty.
        let expected = 0.05 + 1.6 * person.frailty * person.frailty;
        let admissions = poisson(rng, expected);
        if admissions == 0 {
            continue;
        }
        let patient_id = format!("RR8{:07}", patients.len() + 1);
        let ids = held(rng, pop, index, &ACUTE_CARE);
        let area = &pop.areas[person.area];
        patients.push(vec![
            patient_id.clone().into(),
            ids.nhs.as_deref().map(spaced_nhs).into(),
            ids.family.to_uppercase().into(),
            ids.given.to_uppercase().into(),
            ids.dob.into(),
            match person.sex {
                Sex::Male => "1",
                Sex::Female => "2",
            }
            .into(),
            ids.address.to_uppercase().into(),
            ids.postcode.into(),
            area.code.clone().into(),
            area.deprivation_decile.into(),
            // The trust records no objection of its own: the national data
            // opt-out is held at the GP practice.
            "N".into(),
        ]);
        org.records
            .push(("pas_patients", patient_id.clone(), person.id.clone()));
        for _ in 0..admissions {
            let spell_id = format!("S{:08}", spells.len() + 1);
            let admitted = random_date(rng, window_start, as_of);
            let emergency = rng.random_bool((0.35 + person.frailty * 0.55).min(0.95));
            let stay = if emergency {
                rng.random_range(0..(3 + (person.frailty * 20.0) as i64))
            } else {
                rng.random_range(0..3)
            };
            let discharged =
                (admitted + Duration::days(stay) <= as_of).then(|| admitted + Duration::days(stay));
            spells.push(vec![
                spell_id.clone().into(),
                patient_id.clone().into(),
                admitted.into(),
                discharged.into(),
                if emergency { "21" } else { "11" }.into(),
                weighted(rng, DIAGNOSES).into(),
            ]);
            org.records
                .push(("apc_spells", spell_id, person.id.clone()));
        }
    }
    org.tables = vec![patients, spells];
    org
}

/// GP practices: registered patients (with the national data opt-out) and
/// long-term conditions.
pub fn gp(rng: &mut ChaCha8Rng, pop: &Population, as_of: NaiveDate) -> Organisation {
    let mut patients = Table::new(
        "patients",
        &[
            ("patient_guid", S),
            ("nhs_number", S),
            ("surname", S),
            ("forenames", S),
            ("date_of_birth", S),
            ("sex", S),
            ("address_line_1", S),
            ("postcode", S),
            ("lsoa_code", S),
            ("imd_decile", I),
            ("practice_code", S),
            ("registration_date", D),
            ("ndo_status", S),
            ("type1_status", S),
        ],
    );
    let mut conditions = Table::new(
        "long_term_conditions",
        &[
            ("patient_guid", S),
            ("condition", S),
            ("snomed_code", S),
            ("diagnosed_on", D),
        ],
    );
    let mut org = Organisation {
        name: "gp",
        tables: vec![],
        records: vec![],
    };
    for person in &pop.people {
        let guid = format!("G{:07}", patients.len() + 1);
        let area = &pop.areas[person.area];
        let registered = random_date(
            rng,
            person.date_of_birth.max(as_of - Duration::days(365 * 30)),
            as_of,
        );
        patients.push(vec![
            guid.clone().into(),
            person.nhs_number.clone().into(),
            person.family_name.clone().into(),
            person.given_name.clone().into(),
            person.date_of_birth.format("%d/%m/%Y").to_string().into(),
            match person.sex {
                Sex::Male => "M",
                Sex::Female => "F",
            }
            .into(),
            person.address.clone().into(),
            person.postcode.clone().into(),
            area.code.clone().into(),
            area.deprivation_decile.into(),
            format!("B86{:03}", person.area % 40).into(),
            registered.into(),
            person.opted_out.then(|| "opted_out".to_string()).into(),
            person
                .type1_opted_out()
                .then(|| "dissent".to_string())
                .into(),
        ]);
        org.records
            .push(("patients", guid.clone(), person.id.clone()));
        let age = f64::from(person.age_on(as_of));
        for (name, code, at40, at80) in CONDITIONS {
            let p = if age < 40.0 {
                at40 * age / 40.0
            } else {
                at40 + (at80 - at40) * ((age - 40.0) / 40.0).min(1.2)
            };
            if rng.random_bool((p * (0.6 + person.frailty)).clamp(0.0, 0.95)) {
                let diagnosed = random_date(
                    rng,
                    person.date_of_birth
                        + Duration::days(365 * 18).min(as_of - person.date_of_birth),
                    as_of,
                );
                conditions.push(vec![
                    guid.clone().into(),
                    (*name).into(),
                    (*code).into(),
                    diagnosed.into(),
                ]);
                org.records.push((
                    "long_term_conditions",
                    format!("{guid}/{name}"),
                    person.id.clone(),
                ));
            }
        }
    }
    org.tables = vec![patients, conditions];
    org
}

/// The council's adult social care: clients, care packages and the areas
/// reference table. Identifiers are less clean here: NHS numbers are often
/// missing, names carry typos and dates of birth come in several formats.
pub fn council(rng: &mut ChaCha8Rng, pop: &Population, as_of: NaiveDate) -> Organisation {
    let mut clients = Table::new(
        "clients",
        &[
            ("ClientID", S),
            ("NHSNumber", S),
            ("LastName", S),
            ("FirstName", S),
            ("DateOfBirth", S),
            ("Gender", S),
            ("AddressLine1", S),
            ("Postcode", S),
            ("AreaCode", S),
            ("DeprivationDecile", I),
            ("DataSharingObjection", S),
        ],
    );
    let mut packages = Table::new(
        "care_packages",
        &[
            ("PackageID", S),
            ("ClientID", S),
            ("ServiceType", S),
            ("StartDate", D),
            ("EndDate", D),
            ("WeeklyCost", F),
        ],
    );
    let mut org = Organisation {
        name: "council",
        tables: vec![],
        records: vec![],
    };
    for (index, person) in pop.people.iter().enumerate() {
        let age = person.age_on(as_of);
        if age < 18 {
            continue;
        }
        let need = 0.004 + 0.45 * person.frailty.powi(3);
        if !rng.random_bool(need.min(0.9)) {
            continue;
        }
        let client_id = format!("C{:06}", clients.len() + 1);
        let ids = held(rng, pop, index, &COUNCIL_CARE);
        let nhs = ids.nhs.map(|n| {
            if rng.random_bool(0.5) {
                n
            } else {
                spaced_nhs(&n)
            }
        });
        let area = &pop.areas[person.area];
        clients.push(vec![
            client_id.clone().into(),
            nhs.into(),
            maybe_typo(rng, &ids.family, 0.08).into(),
            maybe_typo(rng, &ids.given, 0.05).into(),
            messy_date(rng, ids.dob).into(),
            match person.sex {
                Sex::Male => "Male",
                Sex::Female => "Female",
            }
            .into(),
            ids.address.into(),
            ids.postcode.into(),
            area.code.clone().into(),
            area.deprivation_decile.into(),
            // The council records no objection of its own either.
            "N".into(),
        ]);
        org.records
            .push(("clients", client_id.clone(), person.id.clone()));
        for _ in 0..1 + poisson(rng, 0.6) {
            let package_id = format!("PK{:07}", packages.len() + 1);
            let (service, cost, spread) = SERVICES[if age >= 85 && rng.random_bool(0.4) {
                2 + rng.random_range(0..2)
            } else {
                [0, 0, 0, 1, 4].choose(rng).copied().expect("non-empty")
            }];
            let start = random_date(rng, as_of - Duration::days(900), as_of);
            let end = rng.random_bool(0.5).then(|| random_date(rng, start, as_of));
            let weekly = ((cost + rng.random_range(-spread..spread)) * 100.0).round() / 100.0;
            packages.push(vec![
                package_id.clone().into(),
                client_id.clone().into(),
                service.into(),
                start.into(),
                end.into(),
                weekly.into(),
            ]);
            org.records
                .push(("care_packages", package_id, person.id.clone()));
        }
    }
    let mut areas = Table::new(
        "areas",
        &[
            ("area_code", S),
            ("area_name", S),
            ("deprivation_decile", I),
            ("population", I),
        ],
    );
    for a in &pop.areas {
        areas.push(vec![
            a.code.clone().into(),
            a.name.clone().into(),
            a.deprivation_decile.into(),
            a.population.into(),
        ]);
    }
    org.tables = vec![clients, packages, areas];
    org
}

/// A person's identifiers as the council holds them (for linkage
/// benchmarks): NHS number, family name, given name, date of birth, sex,
/// postcode and address, with the council's rates of missing and wrong
/// values, maiden names, nicknames, typos, swapped dates and old addresses.
pub fn messy_identifiers(
    rng: &mut ChaCha8Rng,
    pop: &Population,
    index: usize,
) -> [Option<String>; 7] {
    let person = &pop.people[index];
    let ids = held(rng, pop, index, &COUNCIL_CARE);
    [
        ids.nhs,
        Some(maybe_typo(rng, &ids.family, 0.08)),
        Some(maybe_typo(rng, &ids.given, 0.05)),
        Some(messy_date(rng, ids.dob)),
        Some(match person.sex {
            Sex::Male => "Male".to_string(),
            Sex::Female => "Female".to_string(),
        }),
        Some(ids.postcode),
        Some(ids.address),
    ]
}

/// The hospital's display format: `943 476 5919`.
fn spaced_nhs(nhs: &str) -> String {
    format!("{} {} {}", &nhs[..3], &nhs[3..6], &nhs[6..])
}

/// A name as a clerk might type it: sometimes one letter wrong, dropped,
/// doubled or swapped with its neighbour, sometimes in capitals.
fn maybe_typo(rng: &mut ChaCha8Rng, name: &str, share: f64) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    if chars.len() > 3 && rng.random_bool(share) {
        let i = rng.random_range(1..chars.len() - 1);
        match rng.random_range(0..4) {
            0 => chars[i] = (b'a' + rng.random_range(0..26)) as char,
            1 => {
                chars.remove(i);
            }
            2 => chars.insert(i, chars[i]),
            _ => chars.swap(i, i + 1),
        }
    }
    let typed: String = chars.into_iter().collect();
    if rng.random_bool(0.2) {
        typed.to_uppercase()
    } else {
        typed
    }
}

/// A date of birth in one of the formats the council's systems have used.
fn messy_date(rng: &mut ChaCha8Rng, dob: NaiveDate) -> String {
    let format = ["%d/%m/%Y", "%Y-%m-%d", "%d %b %Y", "%d.%m.%Y"]
        .choose(rng)
        .expect("non-empty");
    dob.format(format).to_string()
}

/// A Poisson draw by inversion (small means only).
fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    let limit = (-mean).exp();
    let mut product: f64 = rng.random_range(0.0..1.0);
    let mut k = 0;
    while product > limit && k < 50 {
        product *= rng.random_range(0.0..1.0);
        k += 1;
    }
    k
}

/// Helper so literal cells read well in row vectors.
impl From<Option<&str>> for Cell {
    fn from(v: Option<&str>) -> Self {
        Cell::Str(v.map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Each way an organisation's copy goes wrong comes at its stated rate.
    #[test]
    fn held_identifiers_go_wrong_at_the_stated_rates() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let pop = crate::population::generate(&mut rng, 60_000, crate::default_as_of());
        for care in [ACUTE_CARE, COUNCIL_CARE] {
            let (mut counts, mut of) = ([0usize; 7], [0usize; 7]);
            for (i, p) in pop.people.iter().enumerate() {
                let h = held(&mut rng, &pop, i, &care);
                let has_relatives = pop.members[p.household].len() > 1;
                of[0] += 1;
                counts[0] += usize::from(h.nhs.is_none());
                if let Some(n) = &h.nhs
                    && has_relatives
                {
                    of[1] += 1;
                    counts[1] +=
                        usize::from(p.relatives(i, &pop).any(|r| &pop.people[r].nhs_number == n));
                }
                if let Some(n) = &h.nhs {
                    of[2] += 1;
                    counts[2] += usize::from(
                        n != &p.nhs_number
                            && !p.relatives(i, &pop).any(|r| &pop.people[r].nhs_number == n),
                    );
                }
                if p.maiden_name.is_some() {
                    of[3] += 1;
                    counts[3] += usize::from(Some(&h.family) == p.maiden_name.as_ref());
                }
                if GIVEN_VARIANTS.iter().any(|(f, _)| *f == p.given_name) {
                    of[4] += 1;
                    counts[4] += usize::from(h.given != p.given_name);
                }
                if chrono::Datelike::day(&p.date_of_birth) <= 12
                    && chrono::Datelike::day(&p.date_of_birth)
                        != chrono::Datelike::month(&p.date_of_birth)
                {
                    of[5] += 1;
                    counts[5] += usize::from(h.dob != p.date_of_birth);
                }
                if p.previous.is_some() {
                    of[6] += 1;
                    counts[6] += usize::from(h.address != p.address || h.postcode != p.postcode);
                }
            }
            let expected = [
                care.missing_nhs,
                care.relatives_nhs,
                care.mistyped_nhs,
                care.maiden_name,
                care.given_variant,
                care.day_month_swap,
                care.previous_address,
            ];
            for k in 0..7 {
                let share = counts[k] as f64 / of[k] as f64;
                // Five binomial standard errors, and at least a tenth of a point.
                let se = (expected[k] * (1.0 - expected[k]) / of[k] as f64).sqrt();
                assert!(
                    (share - expected[k]).abs() <= (5.0 * se).max(0.001),
                    "{care:?} rate {k}: {share} of {} vs {}",
                    of[k],
                    expected[k]
                );
            }
        }
    }
}

//! The synthetic population of one region: people with identifiers, an area
//! of residence with its deprivation decile, national data opt-outs, and a
//! frailty that drives how much they use hospital and social care.

use chrono::{Datelike, Duration, NaiveDate};
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;

use carrow_linkage::normalise::nhs_check_digit;

/// Share of people who registered a national data opt-out.
pub const OPT_OUT_SHARE: f64 = 0.03;
/// Share of people with a type 1 opt-out at their GP practice.
pub const TYPE1_SHARE: f64 = 0.01;

/// People per small area (an LSOA has about 1 500 residents).
const PEOPLE_PER_AREA: usize = 1_500;

const FAMILY_NAMES: &[&str] = &[
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Adams",
    "Singh",
    "Begum",
    "Wilkinson",
    "Foster",
    "Chapman",
    "Powell",
    "Webb",
    "Rogers",
    "Gray",
    "Mason",
    "Ali",
    "Hunt",
    "Hussain",
    "Campbell",
    "Matthews",
    "Owen",
    "Palmer",
    "Holmes",
    "Mills",
    "Barnes",
    "Knight",
    "Lloyd",
    "Butler",
    "Russell",
    "Barker",
    "Fisher",
    "Stevens",
    "Jenkins",
    "Murray",
    "Dixon",
    "Harvey",
    "O'Brien",
    "Nowak",
    "Kowalski",
    "Ahmed",
    "Rahman",
    "Okafor",
    "Mensah",
    "Nguyen",
    "Da Silva",
    "Müller",
];

const GIVEN_FEMALE: &[&str] = &[
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Mia",
    "Ivy",
    "Lily",
    "Isabella",
    "Sophia",
    "Grace",
    "Margaret",
    "Patricia",
    "Susan",
    "Elizabeth",
    "Mary",
    "Jean",
    "Barbara",
    "Joan",
    "Dorothy",
    "Irene",
    "Sarah",
    "Emma",
    "Claire",
    "Rachel",
    "Helen",
    "Julie",
    "Karen",
    "Nicola",
    "Joanne",
    "Lisa",
    "Aisha",
    "Fatima",
    "Zara",
    "Amira",
    "Priya",
    "Agnieszka",
    "Chloé",
    "Zoë",
    "Siobhan",
    "Niamh",
];

const GIVEN_MALE: &[&str] = &[
    "Oliver",
    "George",
    "Noah",
    "Arthur",
    "Harry",
    "Leo",
    "Muhammad",
    "Jack",
    "Charlie",
    "Oscar",
    "John",
    "David",
    "Michael",
    "Peter",
    "Robert",
    "William",
    "James",
    "Brian",
    "Kenneth",
    "Thomas",
    "Paul",
    "Andrew",
    "Mark",
    "Stephen",
    "Richard",
    "Christopher",
    "Daniel",
    "Matthew",
    "Gary",
    "Darren",
    "Mohammed",
    "Imran",
    "Tariq",
    "Ravi",
    "Piotr",
    "Tomasz",
    "José",
    "Seán",
    "Kwame",
    "Chidi",
];

/// Age-band weights (5-year bands from 0-4 to 95-99), roughly a UK region.
const AGE_BAND_WEIGHTS: [f64; 20] = [
    5.6, 6.0, 6.1, 5.7, 6.0, 6.7, 6.9, 6.7, 6.4, 6.2, 6.8, 6.9, 6.2, 5.3, 5.1, 4.1, 2.9, 1.8, 0.9,
    0.3,
];

/// Households by kind, as shares of households that are not care homes
/// (single, couple, family with children, three generations, sharers),
/// roughly the English census mix.
pub const HOUSEHOLD_MIX: [(HouseholdKind, f64); 5] = [
    (HouseholdKind::Single, 0.30),
    (HouseholdKind::Couple, 0.30),
    (HouseholdKind::Family, 0.28),
    (HouseholdKind::MultiGeneration, 0.05),
    (HouseholdKind::Sharers, 0.07),
];
/// Share of people living in care homes (tens of residents at one address).
pub const CARE_HOME_SHARE: f64 = 0.008;
/// Share of children in families who are one of twins.
pub const TWIN_SHARE: f64 = 0.03;
/// Share of twin pairs whose given names share an initial.
pub const TWINS_SAME_INITIAL: f64 = 0.3;
/// Share of couples who share a family name, one partner having taken it
/// on marriage (their maiden name is kept in the ground truth).
pub const MARRIED_NAME_SHARE: f64 = 0.7;
/// Share of people given a namesake: another person with the same family
/// and given name, sex and date of birth (besides chance namesakes).
pub const NAMESAKE_SHARE: f64 = 0.002;
/// Share of households (not care homes) that moved within the region since
/// some organisations last updated their address.
pub const MOVED_SHARE: f64 = 0.08;

/// What kind of household a person lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HouseholdKind {
    Single,
    Couple,
    Family,
    MultiGeneration,
    Sharers,
    CareHome,
}

impl HouseholdKind {
    /// Its name in the ground truth.
    pub fn name(self) -> &'static str {
        match self {
            HouseholdKind::Single => "single",
            HouseholdKind::Couple => "couple",
            HouseholdKind::Family => "family",
            HouseholdKind::MultiGeneration => "multi_generation",
            HouseholdKind::Sharers => "sharers",
            HouseholdKind::CareHome => "care_home",
        }
    }
}

const STREETS: &[&str] = &[
    "Park Road",
    "Church Street",
    "Station Road",
    "Victoria Road",
    "Green Lane",
    "Manor Road",
    "Main Street",
    "Kings Road",
    "Queens Road",
    "New Road",
    "Grange Road",
    "Mill Lane",
    "Chapel Street",
    "School Lane",
    "Oak Avenue",
    "Beech Grove",
    "Elm Close",
    "Harrogate Road",
    "Otley Road",
    "Headingley Lane",
    "Kirkstall Road",
    "Roundhay Road",
    "York Road",
    "Wetherby Road",
    "Moor Lane",
    "Spen Lane",
    "Cardigan Road",
    "Chapeltown Road",
    "Dewsbury Road",
    "Tong Road",
    "Beeston Road",
    "Hyde Park Road",
    "Woodhouse Lane",
    "Meanwood Road",
    "Stonegate Road",
    "Easterly Road",
    "Harehills Lane",
    "Selby Road",
    "Stanningley Road",
    "Town Street",
];

const CARE_HOMES: &[&str] = &[
    "The Willows",
    "Oakwood House",
    "Meadowbank",
    "Rosewood Court",
    "Beechcroft",
    "Fairview",
    "Highfield Lodge",
    "St Anne's",
    "Ashgrove",
    "The Laurels",
    "Larchfield",
    "Moorlands",
];

/// One household: where its members live.
#[derive(Debug, Clone)]
pub struct Household {
    pub id: String,
    pub kind: HouseholdKind,
    pub residence: Residence,
    pub area: usize,
}

/// An address: the street line(s) and the postcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residence {
    pub address: String,
    pub postcode: String,
}

/// One small area of the region.
#[derive(Debug, Clone)]
pub struct Area {
    pub code: String,
    pub name: String,
    pub postcode_district: String,
    pub deprivation_decile: i64,
    pub population: i64,
}

/// Sex of a synthetic person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Female,
    Male,
}

/// One person of the region, as the ground truth knows them.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: String,
    pub nhs_number: String,
    pub family_name: String,
    pub given_name: String,
    pub sex: Sex,
    pub date_of_birth: NaiveDate,
    /// Where they live now.
    pub postcode: String,
    pub address: String,
    /// Where they lived before a recent move, which some organisations
    /// still hold.
    pub previous: Option<Residence>,
    /// Their family name before marriage, which some records still carry.
    pub maiden_name: Option<String>,
    pub household: usize,
    /// Index of their twin, if they are one.
    pub twin_of: Option<usize>,
    /// Index of the unrelated person they share name, sex and birth date with.
    pub namesake_of: Option<usize>,
    pub area: usize,
    /// A national data opt-out (recorded at the GP practice only).
    pub opted_out: bool,
    /// 0 to 1: drives hospital admissions and social care need.
    pub frailty: f64,
}

impl Person {
    /// A type 1 opt-out: the GP record leaves the practice for direct care
    /// only. About [`TYPE1_SHARE`] of people, drawn from the person's id (a
    /// stream of its own, so no other generated value moves).
    pub fn type1_opted_out(&self) -> bool {
        // FNV-1a: stable across runs and platforms.
        let hash = self.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (hash % 10_000) as f64 / 10_000.0 < TYPE1_SHARE
    }

    /// Age in whole years on `date`.
    pub fn age_on(&self, date: NaiveDate) -> i32 {
        let mut age = date.year() - self.date_of_birth.year();
        if (date.month(), date.day()) < (self.date_of_birth.month(), self.date_of_birth.day()) {
            age -= 1;
        }
        age
    }

    /// The household members other than this person (indices).
    pub fn relatives<'a>(
        &self,
        index: usize,
        pop: &'a Population,
    ) -> impl Iterator<Item = usize> + 'a {
        let household = self.household;
        pop.members[household]
            .iter()
            .copied()
            .filter(move |i| *i != index)
    }
}

/// The region: its areas, households and people.
#[derive(Debug)]
pub struct Population {
    pub areas: Vec<Area>,
    pub households: Vec<Household>,
    /// People of each household (indices into `people`).
    pub members: Vec<Vec<usize>>,
    pub people: Vec<Person>,
}

/// A person before their identifiers are drawn: age, sex, family name.
struct Member {
    age: i32,
    sex: Sex,
    family: Option<String>,
    maiden: Option<String>,
    twin: bool,
}

/// Generates `n` people living in one region in households, as of `as_of`.
pub fn generate(rng: &mut ChaCha8Rng, n: usize, as_of: NaiveDate) -> Population {
    let areas = generate_areas(rng, n);
    let mut nhs_seen = HashSet::with_capacity(n);
    let mut pop = Population {
        areas,
        households: Vec::new(),
        members: Vec::new(),
        people: Vec::with_capacity(n),
    };
    let mut residences = HashSet::new();
    let care_home_places = (n as f64 * CARE_HOME_SHARE).round() as usize;
    while pop.people.len() < n {
        let kind = if pop.people.len() < care_home_places {
            HouseholdKind::CareHome
        } else {
            pick_kind(rng)
        };
        let area = rng.random_range(0..pop.areas.len());
        let residence = new_residence(rng, &pop.areas[area], kind, &mut residences);
        let mut members = household_members(rng, kind);
        members.truncate(n - pop.people.len());
        let household = pop.households.len();
        pop.households.push(Household {
            id: format!("H{:07}", household + 1),
            kind,
            residence: residence.clone(),
            area,
        });
        let mut indices = Vec::new();
        let mut twin_dob: Option<(NaiveDate, usize)> = None;
        for m in members {
            let index = pop.people.len();
            let given_names = if m.sex == Sex::Female {
                GIVEN_FEMALE
            } else {
                GIVEN_MALE
            };
            // Born between `age` and `age + 1` years before the snapshot.
            let mut date_of_birth = as_of
                .checked_sub_months(chrono::Months::new(m.age as u32 * 12))
                .expect("a date in range")
                - Duration::days(rng.random_range(0..365));
            let mut given_name = given_names.choose(rng).expect("non-empty").to_string();
            let mut twin_of = None;
            if m.twin {
                match twin_dob {
                    Some((dob, other)) => {
                        date_of_birth = dob;
                        twin_of = Some(other);
                        let other_given = pop.people[other].given_name.clone();
                        given_name = twin_name(rng, given_names, &other_given);
                        twin_dob = None;
                    }
                    None => twin_dob = Some((date_of_birth, index)),
                }
            }
            let family_name = m
                .family
                .unwrap_or_else(|| FAMILY_NAMES.choose(rng).expect("non-empty").to_string());
            let age = m.age;
            let deprivation = pop.areas[area].deprivation_decile as f64;
            // Frailty rises with age and with deprivation (decile 1 is most
            // deprived); care home residents are frail.
            let age_factor = (f64::from(age) - 50.0).max(0.0) / 50.0;
            let mut frailty =
                (age_factor * 0.8 + (10.0 - deprivation) / 45.0 + rng.random_range(0.0..0.2))
                    .clamp(0.0, 1.0);
            if kind == HouseholdKind::CareHome {
                frailty = frailty.max(0.7);
            }
            pop.people.push(Person {
                id: format!("P{:07}", index + 1),
                nhs_number: unique_nhs_number(rng, &mut nhs_seen),
                family_name,
                given_name,
                sex: m.sex,
                date_of_birth,
                postcode: residence.postcode.clone(),
                address: residence.address.clone(),
                previous: None,
                maiden_name: m.maiden,
                household,
                twin_of,
                namesake_of: None,
                area,
                opted_out: rng.random_bool(OPT_OUT_SHARE),
                frailty,
            });
            if let Some(other) = twin_of {
                pop.people[other].twin_of = Some(index);
            }
            indices.push(index);
        }
        pop.members.push(indices);
    }
    add_namesakes(rng, &mut pop);
    add_moves(rng, &mut pop, &mut residences);
    for p in &pop.people {
        pop.areas[p.area].population += 1;
    }
    pop
}

fn pick_kind(rng: &mut ChaCha8Rng) -> HouseholdKind {
    let mut pick = rng.random_range(0.0..1.0);
    for (kind, share) in HOUSEHOLD_MIX {
        if pick < share {
            return kind;
        }
        pick -= share;
    }
    HouseholdKind::Single
}

/// An adult's age: the region's shape above 18.
fn adult_age(rng: &mut ChaCha8Rng) -> i32 {
    loop {
        let age = sample_age(rng);
        if age >= 18 {
            return age;
        }
    }
}

fn other_sex(sex: Sex) -> Sex {
    match sex {
        Sex::Female => Sex::Male,
        Sex::Male => Sex::Female,
    }
}

fn random_sex(rng: &mut ChaCha8Rng) -> Sex {
    if rng.random_bool(0.51) {
        Sex::Female
    } else {
        Sex::Male
    }
}

/// A couple of adults about `age`: mostly of different sexes, sharing a
/// family name when married (the one who took it keeps a maiden name).
fn couple(rng: &mut ChaCha8Rng, age: i32) -> Vec<Member> {
    let first = random_sex(rng);
    let second = if rng.random_bool(0.92) {
        other_sex(first)
    } else {
        first
    };
    let family = FAMILY_NAMES.choose(rng).expect("non-empty").to_string();
    let married = rng.random_bool(MARRIED_NAME_SHARE);
    let partner_age = (age + rng.random_range(-5..=5)).clamp(18, 99);
    vec![
        Member {
            age,
            sex: first,
            family: Some(family.clone()),
            maiden: None,
            twin: false,
        },
        Member {
            age: partner_age,
            sex: second,
            family: married.then(|| family.clone()),
            maiden: married.then(|| FAMILY_NAMES.choose(rng).expect("non-empty").to_string()),
            twin: false,
        },
    ]
}

/// Children of a family named `family`, the youngest parent aged `parent_age`.
fn children(rng: &mut ChaCha8Rng, family: &str, parent_age: i32, count: usize) -> Vec<Member> {
    let mut out = Vec::new();
    let oldest = (parent_age - 18).clamp(0, 17);
    while out.len() < count {
        let age = rng.random_range(0..=oldest);
        let twins = rng.random_bool(TWIN_SHARE / 2.0) && out.len() + 2 <= count + 1;
        for _ in 0..if twins { 2 } else { 1 } {
            out.push(Member {
                age,
                sex: random_sex(rng),
                family: Some(family.to_string()),
                maiden: None,
                twin: twins,
            });
        }
    }
    out
}

fn household_members(rng: &mut ChaCha8Rng, kind: HouseholdKind) -> Vec<Member> {
    let unrelated = |rng: &mut ChaCha8Rng, age: i32| Member {
        age,
        sex: random_sex(rng),
        family: None,
        maiden: None,
        twin: false,
    };
    match kind {
        HouseholdKind::Single => {
            let age = adult_age(rng);
            vec![unrelated(rng, age)]
        }
        HouseholdKind::Couple => {
            let age = adult_age(rng);
            couple(rng, age)
        }
        HouseholdKind::Family => {
            let age = rng.random_range(24..50);
            let mut members = couple(rng, age);
            let family = members[0].family.clone().expect("named");
            let count = 1 + rng.random_range(0..3);
            members.extend(children(rng, &family, age.min(members[1].age), count));
            members
        }
        HouseholdKind::MultiGeneration => {
            let age = rng.random_range(28..50);
            let mut members = couple(rng, age);
            let family = members[0].family.clone().expect("named");
            members.push(Member {
                age: (age + rng.random_range(22..35)).min(99),
                sex: random_sex(rng),
                family: Some(family.clone()),
                maiden: None,
                twin: false,
            });
            let count = rng.random_range(0..3);
            members.extend(children(rng, &family, age, count));
            members
        }
        HouseholdKind::Sharers => (0..rng.random_range(3..7))
            .map(|_| {
                let age = rng.random_range(18..31);
                unrelated(rng, age)
            })
            .collect(),
        HouseholdKind::CareHome => (0..rng.random_range(20..61))
            .map(|_| {
                let age = rng.random_range(75..100);
                unrelated(rng, age)
            })
            .collect(),
    }
}

/// A twin's given name: another name, with the same initial as the other
/// twin's for [`TWINS_SAME_INITIAL`] of twins when the list allows it.
fn twin_name(rng: &mut ChaCha8Rng, names: &[&str], other: &str) -> String {
    let same_initial: Vec<&&str> = names
        .iter()
        .filter(|n| **n != other && n.chars().next() == other.chars().next())
        .collect();
    if rng.random_bool(TWINS_SAME_INITIAL)
        && let Some(name) = same_initial.choose(rng)
    {
        return name.to_string();
    }
    loop {
        let name = names.choose(rng).expect("non-empty");
        if *name != other {
            return name.to_string();
        }
    }
}

/// Gives [`NAMESAKE_SHARE`] of people a namesake: another person of the same
/// sex takes their family and given names and date of birth.
fn add_namesakes(rng: &mut ChaCha8Rng, pop: &mut Population) {
    let n = pop.people.len();
    let wanted = (n as f64 * NAMESAKE_SHARE).round() as usize;
    let mut made = 0;
    let mut tries = 0;
    while made < wanted && tries < wanted * 20 {
        tries += 1;
        let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
        let (pa, pb) = (&pop.people[a], &pop.people[b]);
        let in_care_home = |p: &Person| pop.households[p.household].kind == HouseholdKind::CareHome;
        if a == b
            || pa.sex != pb.sex
            || in_care_home(pa)
            || in_care_home(pb)
            || pa.household == pb.household
            || pa.namesake_of.is_some()
            || pb.namesake_of.is_some()
            || pa.twin_of.is_some()
            || pb.twin_of.is_some()
        {
            continue;
        }
        let (family, given, dob) = (
            pa.family_name.clone(),
            pa.given_name.clone(),
            pa.date_of_birth,
        );
        let pb = &mut pop.people[b];
        pb.family_name = family;
        pb.given_name = given;
        pb.date_of_birth = dob;
        pb.namesake_of = Some(a);
        pop.people[a].namesake_of = Some(b);
        made += 1;
    }
}

/// Moves [`MOVED_SHARE`] of households (not care homes) to a new address:
/// what they lived at before becomes their previous residence.
fn add_moves(rng: &mut ChaCha8Rng, pop: &mut Population, taken: &mut HashSet<String>) {
    for h in 0..pop.households.len() {
        if pop.households[h].kind == HouseholdKind::CareHome || !rng.random_bool(MOVED_SHARE) {
            continue;
        }
        let area = pop.households[h].area;
        let kind = pop.households[h].kind;
        let new = new_residence(rng, &pop.areas[area], kind, taken);
        let old = std::mem::replace(&mut pop.households[h].residence, new.clone());
        for &i in &pop.members[h] {
            let person = &mut pop.people[i];
            person.previous = Some(old.clone());
            person.address = new.address.clone();
            person.postcode = new.postcode.clone();
        }
    }
}

/// A new address in `area` that no household has yet.
fn new_residence(
    rng: &mut ChaCha8Rng,
    area: &Area,
    kind: HouseholdKind,
    taken: &mut HashSet<String>,
) -> Residence {
    loop {
        let street = STREETS.choose(rng).expect("non-empty");
        let number = rng.random_range(1..250);
        let address = match kind {
            HouseholdKind::CareHome => format!(
                "{} Care Home, {number} {street}",
                CARE_HOMES.choose(rng).expect("non-empty")
            ),
            HouseholdKind::Sharers => format!("Flat {}, {number} {street}", rng.random_range(1..9)),
            _ => format!("{number} {street}"),
        };
        let postcode = postcode_in(rng, area);
        if taken.insert(format!("{address}|{postcode}")) {
            return Residence { address, postcode };
        }
    }
}

fn generate_areas(rng: &mut ChaCha8Rng, people: usize) -> Vec<Area> {
    let count = people.div_ceil(PEOPLE_PER_AREA).max(10);
    // Every decile is present; which area gets which is random.
    let mut deciles: Vec<i64> = (0..count).map(|i| 1 + (i % 10) as i64).collect();
    deciles.shuffle(rng);
    (0..count)
        .map(|i| Area {
            code: format!("E01{:06}", 11_000 + i),
            name: format!("Leeds {:03}{}", 1 + i / 4, (b'A' + (i % 4) as u8) as char),
            postcode_district: format!("LS{}", 1 + i % 29),
            deprivation_decile: deciles[i],
            population: 0,
        })
        .collect()
}

fn sample_age(rng: &mut ChaCha8Rng) -> i32 {
    let total: f64 = AGE_BAND_WEIGHTS.iter().sum();
    let mut pick = rng.random_range(0.0..total);
    for (band, w) in AGE_BAND_WEIGHTS.iter().enumerate() {
        if pick < *w {
            return band as i32 * 5 + rng.random_range(0..5);
        }
        pick -= w;
    }
    99
}

fn unique_nhs_number(rng: &mut ChaCha8Rng, seen: &mut HashSet<String>) -> String {
    loop {
        let nine = format!("{:09}", rng.random_range(400_000_000u64..500_000_000));
        let Some(check) = nhs_check_digit(nine.as_bytes()) else {
            continue;
        };
        let nhs = format!("{nine}{check}");
        if seen.insert(nhs.clone()) {
            return nhs;
        }
    }
}

fn postcode_in(rng: &mut ChaCha8Rng, area: &Area) -> String {
    const LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";
    let l1 = LETTERS[rng.random_range(0..LETTERS.len())] as char;
    let l2 = LETTERS[rng.random_range(0..LETTERS.len())] as char;
    format!(
        "{} {}{l1}{l2}",
        area.postcode_district,
        rng.random_range(1..10)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrow_linkage::normalise;
    use rand::SeedableRng;

    fn population(n: usize) -> (Population, NaiveDate) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let as_of = NaiveDate::from_ymd_opt(2026, 10, 31).unwrap();
        (generate(&mut rng, n, as_of), as_of)
    }

    #[test]
    fn people_have_valid_unique_identifiers() {
        let (pop, as_of) = population(3_000);
        assert_eq!(pop.people.len(), 3_000);
        let mut nhs = HashSet::new();
        for p in &pop.people {
            assert!(
                normalise::nhs_number(&p.nhs_number).is_some(),
                "{}",
                p.nhs_number
            );
            assert!(normalise::postcode(&p.postcode).is_some(), "{}", p.postcode);
            assert!(nhs.insert(p.nhs_number.clone()));
            assert!((0..100).contains(&p.age_on(as_of)));
        }
        assert_eq!(pop.areas.iter().map(|a| a.population).sum::<i64>(), 3_000);
        let deciles: HashSet<i64> = pop.areas.iter().map(|a| a.deprivation_decile).collect();
        assert_eq!(deciles.len(), 10, "every decile present");
    }

    /// The stated rates, each within several binomial standard errors.
    #[test]
    fn households_twins_namesakes_and_moves_come_at_their_stated_rates() {
        let (pop, as_of) = population(100_000);
        let n = pop.people.len() as f64;
        let share = |count: usize, of: f64| count as f64 / of;
        // Everyone lives in a household at its address.
        for (h, members) in pop.members.iter().enumerate() {
            for &i in members {
                let p = &pop.people[i];
                assert_eq!(p.household, h);
                assert_eq!(p.address, pop.households[h].residence.address);
                assert_eq!(p.postcode, pop.households[h].residence.postcode);
            }
        }
        // Care homes: 0.8% of people, 20 to 60 residents aged 75 and over.
        let in_care: Vec<usize> = (0..pop.households.len())
            .filter(|h| pop.households[*h].kind == HouseholdKind::CareHome)
            .collect();
        let residents: usize = in_care.iter().map(|h| pop.members[*h].len()).sum();
        assert!(
            (share(residents, n) - CARE_HOME_SHARE).abs() < 0.001,
            "{residents}"
        );
        for h in &in_care[..in_care.len() - 1] {
            assert!((20..=60).contains(&pop.members[*h].len()));
            assert!(
                pop.members[*h]
                    .iter()
                    .all(|&i| pop.people[i].age_on(as_of) >= 75)
            );
        }
        // The household mix (of households other than care homes).
        let others = pop.households.len() - in_care.len();
        for (kind, expected) in HOUSEHOLD_MIX {
            let count = pop.households.iter().filter(|h| h.kind == kind).count();
            assert!(
                (share(count, others as f64) - expected).abs() < 0.01,
                "{kind:?}: {count} of {others}"
            );
        }
        // Twins: same date of birth, family name and address; different given names.
        let children = pop
            .people
            .iter()
            .filter(|p| {
                matches!(
                    pop.households[p.household].kind,
                    HouseholdKind::Family | HouseholdKind::MultiGeneration
                ) && p.age_on(as_of) < 18
            })
            .count();
        let twins: Vec<&Person> = pop.people.iter().filter(|p| p.twin_of.is_some()).collect();
        assert!(
            (share(twins.len(), children as f64) - TWIN_SHARE).abs() < 0.01,
            "{} twins of {children} children",
            twins.len()
        );
        let mut same_initial = 0;
        for t in &twins {
            let other = &pop.people[t.twin_of.unwrap()];
            assert_eq!(other.twin_of.map(|i| &pop.people[i].id), Some(&t.id));
            assert_eq!(
                (t.date_of_birth, &t.family_name, &t.address),
                (other.date_of_birth, &other.family_name, &other.address)
            );
            assert_ne!(t.given_name, other.given_name);
            same_initial +=
                usize::from(t.given_name.chars().next() == other.given_name.chars().next());
        }
        assert!((share(same_initial, twins.len() as f64) - TWINS_SAME_INITIAL).abs() < 0.1);
        // Namesakes: same names, sex and birth date, different people and households.
        let namesakes: Vec<&Person> = pop
            .people
            .iter()
            .filter(|p| p.namesake_of.is_some())
            .collect();
        assert!((share(namesakes.len() / 2, n) - NAMESAKE_SHARE).abs() < 0.0005);
        for p in namesakes {
            let other = &pop.people[p.namesake_of.unwrap()];
            assert_eq!(
                (&p.family_name, &p.given_name, p.date_of_birth, p.sex),
                (
                    &other.family_name,
                    &other.given_name,
                    other.date_of_birth,
                    other.sex
                )
            );
            assert_ne!(
                (p.household, &p.nhs_number),
                (other.household, &other.nhs_number)
            );
        }
        // Married names and moves.
        let couples = pop
            .households
            .iter()
            .enumerate()
            .filter(|(_, h)| h.kind == HouseholdKind::Couple)
            .count();
        let maiden = pop
            .people
            .iter()
            .filter(|p| p.maiden_name.is_some())
            .count();
        let couple_like = pop
            .households
            .iter()
            .filter(|h| {
                matches!(
                    h.kind,
                    HouseholdKind::Couple | HouseholdKind::Family | HouseholdKind::MultiGeneration
                )
            })
            .count();
        assert!(couples > 0);
        assert!(
            (share(maiden, couple_like as f64) - MARRIED_NAME_SHARE).abs() < 0.03,
            "{maiden} of {couple_like}"
        );
        let moved = pop
            .households
            .iter()
            .enumerate()
            .filter(|(h, _)| {
                pop.members[*h]
                    .iter()
                    .any(|&i| pop.people[i].previous.is_some())
            })
            .count();
        assert!(
            (share(moved, others as f64) - MOVED_SHARE).abs() < 0.01,
            "{moved}"
        );
        for p in pop.people.iter().filter(|p| p.previous.is_some()) {
            let now = Residence {
                address: p.address.clone(),
                postcode: p.postcode.clone(),
            };
            assert_ne!(p.previous.as_ref(), Some(&now));
        }
    }
}

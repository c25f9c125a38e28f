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
    pub postcode: String,
    pub area: usize,
    pub opted_out: bool,
    /// 0 to 1: drives hospital admissions and social care need.
    pub frailty: f64,
}

impl Person {
    /// Age in whole years on `date`.
    pub fn age_on(&self, date: NaiveDate) -> i32 {
        let mut age = date.year() - self.date_of_birth.year();
        if (date.month(), date.day()) < (self.date_of_birth.month(), self.date_of_birth.day()) {
            age -= 1;
        }
        age
    }
}

/// The region: its areas and people.
#[derive(Debug)]
pub struct Population {
    pub areas: Vec<Area>,
    pub people: Vec<Person>,
}

/// Generates `n` people living in one region, as of `as_of`.
pub fn generate(rng: &mut ChaCha8Rng, n: usize, as_of: NaiveDate) -> Population {
    let areas = generate_areas(rng, n);
    let mut nhs_seen = HashSet::with_capacity(n);
    let mut people = Vec::with_capacity(n);
    for i in 0..n {
        let sex = if rng.random_bool(0.51) {
            Sex::Female
        } else {
            Sex::Male
        };
        let age = sample_age(rng);
        let date_of_birth = as_of - Duration::days(i64::from(age) * 365 + rng.random_range(0..365));
        let area = rng.random_range(0..areas.len());
        let given_names = if sex == Sex::Female {
            GIVEN_FEMALE
        } else {
            GIVEN_MALE
        };
        let deprivation = areas[area].deprivation_decile as f64;
        // Frailty rises with age and with deprivation (decile 1 is most deprived).
        let age_factor = (f64::from(age) - 50.0).max(0.0) / 50.0;
        let frailty = (age_factor * 0.8 + (10.0 - deprivation) / 45.0 + rng.random_range(0.0..0.2))
            .clamp(0.0, 1.0);
        people.push(Person {
            id: format!("P{:07}", i + 1),
            nhs_number: unique_nhs_number(rng, &mut nhs_seen),
            family_name: FAMILY_NAMES.choose(rng).expect("non-empty").to_string(),
            given_name: given_names.choose(rng).expect("non-empty").to_string(),
            sex,
            date_of_birth,
            postcode: postcode_in(rng, &areas[area]),
            area,
            opted_out: rng.random_bool(OPT_OUT_SHARE),
            frailty,
        });
    }
    let mut areas = areas;
    for p in &people {
        areas[p.area].population += 1;
    }
    Population { areas, people }
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

    #[test]
    fn people_have_valid_unique_identifiers() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let as_of = NaiveDate::from_ymd_opt(2026, 10, 31).unwrap();
        let pop = generate(&mut rng, 3_000, as_of);
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
}

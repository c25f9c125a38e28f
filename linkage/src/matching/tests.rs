use super::*;
use crate::fields::FieldTokeniser;
use crate::identity::{Identity, RawIdentity};
use crate::secret::LinkageSecret;

/// A person's identifiers as one record holds them.
#[derive(Clone, Default)]
struct Ids {
    nhs: Option<String>,
    family: String,
    given: String,
    dob: String,
    sex: &'static str,
    postcode: String,
    address: String,
}

fn record(source: u32, person: u32, serial: u32, ids: &Ids) -> LinkRecord {
    let secret = LinkageSecret::from_bytes([3u8; 32]);
    let identity = Identity::normalise(&RawIdentity {
        nhs_number: ids.nhs.as_deref(),
        family_name: Some(&ids.family),
        given_name: Some(&ids.given),
        date_of_birth: Some(&ids.dob),
        sex: Some(ids.sex),
        postcode: Some(&ids.postcode),
        address: Some(&ids.address),
        ..Default::default()
    });
    let mut pid = [0u8; 16];
    pid[..4].copy_from_slice(&person.to_be_bytes());
    pid[4..8].copy_from_slice(&serial.to_be_bytes());
    pid[8] = source as u8;
    LinkRecord {
        source,
        pid,
        fields: FieldTokeniser::new(&secret, "p").tokens(&identity),
    }
}

/// A valid NHS number (modulus 11) made from `seed`.
fn nhs(seed: u64) -> String {
    let mut n = 400_000_000 + seed * 7;
    loop {
        let digits: Vec<u32> = format!("{n:09}")
            .chars()
            .map(|c| c.to_digit(10).unwrap())
            .collect();
        let sum: u32 = digits
            .iter()
            .enumerate()
            .map(|(i, d)| d * (10 - i as u32))
            .sum();
        let check = (11 - sum % 11) % 11;
        if check < 10 {
            return format!("{n:09}{check}");
        }
        n += 1;
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FAMILIES: [&str; 20] = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel",
    "Khan", "Evans", "Thomas", "Roberts", "Walker", "Wright", "Thompson", "Robinson", "White",
    "Hughes", "Edwards",
];
const GIVENS: [&str; 20] = [
    "Anna", "Ben", "Carl", "Dina", "Emma", "Fred", "Gina", "Hugo", "Iris", "Jack", "Kate", "Liam",
    "Mona", "Nick", "Olga", "Paul", "Rosa", "Sam", "Tina", "Umar",
];

/// Pairwise (true positives, false positives, false negatives) of `keys`
/// against `truth`, over pairs of records from different sources.
fn score(records: &[LinkRecord], keys: &[Token], truth: &[u32]) -> (usize, usize, usize) {
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for a in 0..records.len() {
        for b in a + 1..records.len() {
            if records[a].source == records[b].source {
                continue;
            }
            match (keys[a] == keys[b], truth[a] == truth[b]) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
    }
    (tp, fp, fn_)
}

/// A small town of households, twins, a care home, namesakes, moves,
/// nicknames, maiden names and a relative's NHS number, held by a
/// careful source (0) and a careless one (1).
fn town() -> (Vec<LinkRecord>, Vec<u32>, Vec<(u32, u32)>) {
    let mut rng = Rng(7);
    let mut people: Vec<Ids> = Vec::new();
    let mut households: Vec<Vec<u32>> = Vec::new();
    let mut twins = Vec::new();
    let dob = |rng: &mut Rng, from: u64| {
        format!(
            "{}-{:02}-{:02}",
            from + rng.below(20),
            1 + rng.below(12),
            1 + rng.below(28)
        )
    };
    let home = |rng: &mut Rng, h: usize| {
        (
            format!("LS{} {}AB", 1 + rng.below(3), h % 9),
            format!("{} Park Road", 1 + h),
        )
    };
    for h in 0..150usize {
        let family = FAMILIES[rng.below(20) as usize].to_string();
        let (postcode, address) = home(&mut rng, h);
        let mut members = Vec::new();
        let parents = 1 + rng.below(2);
        for k in 0..parents {
            let person = Ids {
                nhs: Some(nhs(people.len() as u64)),
                family: family.clone(),
                given: GIVENS[rng.below(20) as usize].to_string(),
                dob: dob(&mut rng, 1950),
                sex: if k == 0 { "F" } else { "M" },
                postcode: postcode.clone(),
                address: address.clone(),
            };
            members.push(people.len() as u32);
            people.push(person);
        }
        // Children; every fifth household has twins.
        let children = rng.below(3);
        for c in 0..children {
            let born = dob(&mut rng, 1990);
            let mut child = Ids {
                nhs: Some(nhs(people.len() as u64)),
                family: family.clone(),
                given: GIVENS[rng.below(20) as usize].to_string(),
                dob: born.clone(),
                sex: if rng.chance(50) { "F" } else { "M" },
                postcode: postcode.clone(),
                address: address.clone(),
            };
            members.push(people.len() as u32);
            people.push(child.clone());
            if c == 0 && h % 5 == 0 {
                let first = GIVENS.iter().position(|g| *g == child.given).unwrap();
                child.given = GIVENS[(first + 1) % 20].to_string();
                child.nhs = Some(nhs(people.len() as u64));
                twins.push((people.len() as u32 - 1, people.len() as u32));
                members.push(people.len() as u32);
                people.push(child);
            }
        }
        households.push(members);
    }
    // A care home: forty residents at one address and postcode.
    let mut residents = Vec::new();
    for _ in 0..40 {
        residents.push(people.len() as u32);
        people.push(Ids {
            nhs: Some(nhs(people.len() as u64)),
            family: FAMILIES[rng.below(20) as usize].to_string(),
            given: GIVENS[rng.below(20) as usize].to_string(),
            dob: dob(&mut rng, 1925),
            sex: if rng.chance(60) { "F" } else { "M" },
            postcode: "LS9 9ZZ".into(),
            address: "The Willows Care Home 14 Harrogate Road".into(),
        });
    }
    households.push(residents);

    let (mut records, mut truth) = (Vec::new(), Vec::new());
    for (person, ids) in people.iter().enumerate() {
        records.push(record(0, person as u32, 0, ids));
        truth.push(person as u32);
        if !rng.chance(70) {
            continue;
        }
        // The careless source: often no NHS number, sometimes a relative's,
        // typos, nicknames, an old address.
        let mut held = ids.clone();
        let household = households
            .iter()
            .find(|h| h.contains(&(person as u32)))
            .unwrap();
        if rng.chance(25) {
            held.nhs = None;
        } else if rng.chance(3) && household.len() > 1 {
            let relative = household.iter().find(|r| **r != person as u32).unwrap();
            held.nhs = people[*relative as usize].nhs.clone();
        }
        if rng.chance(10) {
            let mut chars: Vec<char> = held.family.chars().collect();
            chars[2] = if chars[2] == 'x' { 'y' } else { 'x' };
            held.family = chars.into_iter().collect();
        }
        if held.given == "Sam" && rng.chance(50) {
            held.given = "Samuel".into();
        }
        if rng.chance(10) {
            held.postcode = "LS4 4XY".into();
            held.address = format!("{} Station Road", 1 + rng.below(90));
        }
        records.push(record(1, person as u32, 1, &held));
        truth.push(person as u32);
    }
    (records, truth, twins)
}

#[test]
fn households_twins_and_care_homes_are_not_merged_and_people_are_found() {
    let (records, truth, twins) = town();
    let linked = link(&records, &LinkOptions::default(), |_| {});
    let (tp, fp, fn_) = score(&records, &linked.keys, &truth);
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    assert!(
        precision >= 0.999 && recall >= 0.95,
        "precision {precision}, recall {recall}: {:#?}",
        linked.report
    );
    // No twin pair is one person.
    for (a, b) in twins {
        for (i, _) in truth.iter().enumerate().filter(|(_, p)| **p == a) {
            for (j, _) in truth.iter().enumerate().filter(|(_, p)| **p == b) {
                assert_ne!(linked.keys[i], linked.keys[j], "twins {a} and {b}");
            }
        }
    }
    // No group holds two different NHS numbers, nor more than one person's records.
    let mut numbers: HashMap<Token, HashSet<Token>> = HashMap::new();
    for (r, key) in records.iter().zip(&linked.keys) {
        if let Some(n) = r.fields.nhs_number {
            numbers.entry(*key).or_default().insert(n);
        }
    }
    assert!(numbers.values().all(|n| n.len() == 1), "{numbers:?}");
    // A record carrying a relative's NHS number (the same pid as the
    // relative's record at the other node) is not grouped with the relative.
    let mut relatives = 0;
    for (i, r) in records.iter().enumerate() {
        for (j, other) in records.iter().enumerate() {
            if r.source == 1
                && other.source == 0
                && r.fields.nhs_number.is_some()
                && r.fields.nhs_number == other.fields.nhs_number
                && truth[i] != truth[j]
            {
                relatives += 1;
                assert_ne!(
                    linked.keys[i], linked.keys[j],
                    "record {i} holds {j}'s number"
                );
            }
        }
    }
    assert!(
        relatives >= 3,
        "the town has records with a relative's number: {relatives}"
    );
    assert!(
        linked.report.largest_group() <= 2,
        "{:?}",
        linked.report.group_sizes
    );
    // The model learned from labels, not EM, and knows a shared address
    // is weak evidence.
    assert!(linked.report.labelled_pairs > 100);
    let weight = |c: &str, l: &str| {
        linked
            .report
            .weights
            .iter()
            .find(|w| w.comparison == c && w.level == l)
            .unwrap()
            .clone()
    };
    assert_eq!(weight("date_of_birth", "exact").m_source, MSource::Labels);
    assert!(weight("date_of_birth", "disagree").weight < -3.0);
    assert!(weight("given", "exact").weight > 1.0);
    assert!(
        linked
            .report
            .refused
            .iter()
            .any(|r| r.constraint == Conflict::NhsNumbers || r.constraint == Conflict::DatesOfBirth),
        "{:?}",
        linked.report.refused
    );
}

#[test]
fn namesakes_born_the_same_day_are_told_apart_by_what_else_they_share() {
    let ids = |nhs: Option<&str>, postcode: &str, address: &str| Ids {
        nhs: nhs.map(str::to_string),
        family: "Smith".into(),
        given: "John".into(),
        dob: "1950-01-01".into(),
        sex: "M",
        postcode: postcode.into(),
        address: address.into(),
    };
    let a = record(0, 1, 0, &ids(Some("9434765919"), "LS1 1AA", "1 Mill Lane"));
    let b = record(0, 2, 0, &ids(Some("4010232137"), "LS9 9ZZ", "7 Oak Avenue"));
    let c = record(1, 3, 0, &ids(None, "LS9 9ZZ", "7 Oak Avenue"));
    let linked = link(&[a, b, c], &LinkOptions::default(), |_| {});
    assert_ne!(
        linked.keys[0], linked.keys[1],
        "two NHS numbers, two people"
    );
    assert_ne!(
        linked.keys[0], linked.keys[2],
        "c does not live where a lives"
    );
}

#[test]
fn typos_and_missing_nhs_numbers_still_link_and_different_people_do_not() {
    let mut rng = Rng(12345);
    let (mut records, mut truth) = (Vec::new(), Vec::new());
    for person in 0..400u32 {
        let ids = Ids {
            nhs: Some(nhs(person as u64)),
            family: FAMILIES[rng.below(20) as usize].into(),
            given: GIVENS[rng.below(20) as usize].into(),
            dob: format!(
                "19{}-{:02}-{:02}",
                40 + rng.below(10),
                1 + rng.below(12),
                1 + rng.below(28)
            ),
            sex: if rng.below(2) == 0 { "F" } else { "M" },
            postcode: format!("LS{} {}AB", 1 + rng.below(4), rng.below(3)),
            address: format!("{} High Street", 1 + rng.below(300)),
        };
        records.push(record(0, person, 0, &ids));
        truth.push(person);
        if rng.below(10) < 6 {
            let mut held = ids.clone();
            held.nhs = None;
            if rng.below(5) == 0 {
                let mut chars: Vec<char> = held.family.chars().collect();
                chars[2] = if chars[2] == 'x' { 'y' } else { 'x' };
                held.family = chars.into_iter().collect();
            }
            records.push(record(1, person, 1, &held));
            truth.push(person);
        }
    }
    let linked = link(&records, &LinkOptions::default(), |_| {});
    let (tp, fp, fn_) = score(&records, &linked.keys, &truth);
    assert!(tp > 200, "{tp}");
    assert_eq!((fp, fn_), (0, 0), "{:#?}", linked.report);
    assert!(
        linked.report.linked_by_score > 0,
        "typos were linked by score: {:?}",
        linked.report
    );
}

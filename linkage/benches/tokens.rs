//! Tokens per second per core: NHS-number tokens and name + date-of-birth
//! tokens over Arrow arrays, beside the raw HMAC-SHA256 rate of the same key
//! preparation (the baseline the token rates are compared with).
//!
//! Run: `cargo bench -p carrow-linkage --bench tokens`

use std::hint::black_box;
use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray};
use carrow_linkage::normalise::nhs_check_digit;
use carrow_linkage::{
    IdentifierColumns, IdentifierKind, KeyedHasher, LinkageSecret, TokenKind, Tokeniser,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ROWS: usize = 100_000;

fn nhs_numbers() -> Vec<String> {
    let mut out = Vec::with_capacity(ROWS);
    let mut prefix = 400_000_000u64;
    while out.len() < ROWS {
        prefix += 3001;
        let nine = format!("{prefix:09}");
        if let Some(check) = nhs_check_digit(nine.as_bytes()) {
            out.push(format!("{nine}{check}"));
        }
    }
    out
}

fn names() -> IdentifierColumns {
    const FAMILY: [&str; 8] = [
        "Smith", "Jones", "O'Brien", "Khan", "Williams", "Nowak", "Brown", "Patel",
    ];
    const GIVEN: [&str; 8] = [
        "Alice", "Mohammed", "José", "Olivia", "Jack", "Amelia", "Noah", "Isla",
    ];
    let col = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values((0..ROWS).map(f)))
    };
    IdentifierColumns::default()
        .with(
            IdentifierKind::FamilyName,
            col(&|i| FAMILY[i % 8].to_string()),
        )
        .with(
            IdentifierKind::GivenName,
            col(&|i| GIVEN[(i / 8) % 8].to_string()),
        )
        .with(
            IdentifierKind::DateOfBirth,
            col(&|i| format!("19{:02}-{:02}-{:02}", 20 + i % 80, 1 + i % 12, 1 + i % 28)),
        )
        .with(
            IdentifierKind::Sex,
            col(&|i| if i % 2 == 0 { "F" } else { "M" }.to_string()),
        )
}

fn bench(c: &mut Criterion) {
    let secret = LinkageSecret::from_bytes([9; 32]);
    let tokeniser = Tokeniser::new(&secret, "bench");
    let nhs = nhs_numbers();
    let nhs_array: ArrayRef = Arc::new(StringArray::from(nhs.clone()));
    let name_columns = names();
    let hasher = KeyedHasher::derive(&secret, "bench", TokenKind::NhsNumber);
    // The same 14-byte message shape an NHS-number token hashes.
    let messages: Vec<[u8; 14]> = nhs
        .iter()
        .map(|n| {
            let mut m = [0u8; 14];
            m[..4].copy_from_slice(&10u32.to_be_bytes());
            m[4..].copy_from_slice(n.as_bytes());
            m
        })
        .collect();

    let mut group = c.benchmark_group("tokens_per_second");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("baseline_raw_hmac_sha256", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(hasher.mac(black_box(m)));
            }
        })
    });
    group.bench_function("nhs_number_tokens_arrow", |b| {
        b.iter(|| black_box(tokeniser.nhs_number_array(&nhs_array).unwrap()))
    });
    group.bench_function("name_dob_sex_tokens_arrow", |b| {
        b.iter(|| {
            black_box(
                tokeniser
                    .token_array(TokenKind::NameDobSex, &name_columns)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

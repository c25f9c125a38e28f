//! Results stream batch by batch: a node releasing a table of millions of
//! rows never holds the whole result in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use carrow_linkage::normalise::nhs_check_digit;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use futures::StreamExt;

use crate::support::{NodeProcess, client, generate, open_stream};

const ROWS: usize = 3_000_000;
const BATCH: usize = 100_000;

/// Peak and current resident memory of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Writes `ROWS` rows of (NHS number, value, label) to a Parquet file.
pub fn write_big_parquet(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("nhs_number", DataType::Utf8, true),
        Field::new("value", DataType::Int64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    let mut prefix = 400_000_000u64;
    for start in (0..ROWS).step_by(BATCH) {
        let mut nhs = Vec::with_capacity(BATCH);
        while nhs.len() < BATCH {
            prefix += 1;
            let nine = format!("{prefix:09}");
            if let Some(check) = nhs_check_digit(nine.as_bytes()) {
                nhs.push(format!("{nine}{check}"));
            }
        }
        let values = Int64Array::from_iter_values((start..start + BATCH).map(|i| i as i64));
        let labels = StringArray::from_iter_values(
            (start..start + BATCH).map(|i| format!("service-line-{:08}", i % 977)),
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(nhs)),
                Arc::new(values),
                Arc::new(labels),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
}

/// Writes the big table beside the acute node's data and publishes it as
/// `big` (pid from the NHS number, plus a number and a label). Returns the
/// node's config path.
pub fn publish_big_table(root: &std::path::Path) -> std::path::PathBuf {
    let acute = root.join("acute");
    write_big_parquet(&acute.join("big.parquet"));
    let config_path = acute.join("node.toml");
    let mut config: carrow_node::NodeConfig =
        toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.sources.insert(
        "big".into(),
        carrow_node::config::SourceConfig::Parquet {
            path: "big.parquet".into(),
        },
    );
    config.tables.push(carrow_node::config::TableConfig {
        name: "big".into(),
        description: String::new(),
        personal: true,
        source: Some("big".into()),
        sql: None,
        identifiers: carrow_node::config::IdentifierColumnsConfig(
            [(
                carrow_linkage::IdentifierKind::NhsNumber,
                carrow_node::config::LocalColumns::One("nhs_number".into()),
            )]
            .into(),
        ),
        columns: vec![
            carrow_node::config::ColumnConfig {
                name: "value".into(),
                from: None,
                expr: None,
                data_type: None,
            },
            carrow_node::config::ColumnConfig {
                name: "label".into(),
                from: None,
                expr: None,
                data_type: None,
            },
        ],
        opt_out: vec![],
        freshness: None,
    });
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    config_path
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_millions_of_rows_keeps_node_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 100, 41);
    let config_path = publish_big_table(dir.path());
    let node = NodeProcess::start(&config_path);
    let pid = node.child.id();
    let (_, baseline) = memory(pid);
    let mut c = client(
        node.addr,
        "operator",
        &dir.path().join("secrets/operator-acute.token"),
    )
    .await;

    // Sample the node's memory while the client reads slowly.
    let done = Arc::new(AtomicBool::new(false));
    let peak_seen = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak_seen) = (done.clone(), peak_seen.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak_seen.fetch_max(memory(pid).1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let mut stream = open_stream(&mut c, "SELECT * FROM big").await;
    let (mut rows, mut bytes) = (0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (high_water, _) = memory(pid);
    let peak = peak_seen.load(Ordering::Relaxed).max(high_water);
    let growth = peak.saturating_sub(baseline);
    println!(
        "streamed {rows} rows, {} MB of Arrow data; node resident memory {} MB at start, peak {} MB (growth {} MB)",
        bytes >> 20,
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    assert_eq!(rows, ROWS);
    // The node's growth stays a fraction of what it released.
    assert!(
        bytes as u64 > 150 << 20,
        "expected a large result, got {bytes} bytes"
    );
    assert!(
        growth < (bytes as u64) / 2,
        "node grew by {growth} bytes while releasing {bytes}"
    );
}

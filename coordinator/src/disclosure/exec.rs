//! [`DisclosureExec`]: combines per-cell-and-person rows into cells and
//! releases each under the rules.

use std::fmt;
use std::sync::Arc;

use carrow_governance::disclosure::{Cell, Contributions, Report};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, Float64Array, Int64Array, RecordBatch,
    UInt64Array,
};
use datafusion::arrow::compute::{cast, interleave, nullif};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, PlanProperties,
};
use futures::TryStreamExt;

use super::{AuditReport, Measure, Release};

/// Collects its input's per-cell-and-person rows, then releases the cells.
#[derive(Debug)]
pub struct DisclosureExec {
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    release: Release,
    properties: Arc<PlanProperties>,
}

impl DisclosureExec {
    /// An operator releasing `input` as rows of `schema`.
    pub fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef, release: Release) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Self {
            input,
            schema,
            release,
            properties,
        }
    }
}

impl DisplayAs for DisclosureExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DisclosureExec: {}", self.release.rules.describe())
    }
}

impl ExecutionPlan for DisclosureExec {
    fn name(&self) -> &str {
        "DisclosureExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            self.schema.clone(),
            self.release.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (schema, release) = (self.schema.clone(), self.release.clone());
        let out = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            // Hashing every person of every cell is CPU work: off the async workers.
            let (batch, _report) =
                tokio::task::spawn_blocking(move || release_cells(&batches, &schema, &release))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            out,
        )))
    }
}

/// The cells found in the input, with where each was first seen.
struct Cells {
    /// Per cell: its grouping set, and a (batch, row) holding its values.
    first_seen: Vec<(usize, (usize, usize))>,
    /// Per grouping set: encoded grouping values to cell.
    index: Vec<hashbrown::HashMap<Box<[u8]>, u32>>,
}

/// Releases the cells of `batches` (grouping columns, pid, per-person
/// parts) as one batch of `schema`; records the report in the sink and
/// returns it too.
pub(super) fn release_cells(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    release: &Release,
) -> Result<(RecordBatch, AuditReport)> {
    let groups = release.groups;
    let sets: Vec<Vec<bool>> = release
        .sets
        .clone()
        .unwrap_or_else(|| vec![vec![false; groups]]);
    let parts: usize = release.measures.iter().map(|(_, p)| p.len()).sum();
    let part_columns: Vec<usize> = release
        .measures
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .collect();

    let mut cells = Cells {
        first_seen: Vec::new(),
        index: vec![hashbrown::HashMap::new(); sets.len()],
    };
    let mut persons: hashbrown::HashMap<(u32, [u8; 16]), u32> = hashbrown::HashMap::new();
    let mut slot_cell: Vec<u32> = Vec::new();
    let mut slot_pid: Vec<[u8; 16]> = Vec::new();
    let mut slot_parts: Vec<f64> = Vec::new();

    for (b, batch) in batches.iter().enumerate() {
        let pid = batch
            .column(groups)
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .ok_or_else(|| DataFusionError::Internal("disclosure control: pid column".into()))?;
        let values: Vec<Float64Array> = part_columns
            .iter()
            .map(|c| {
                let array = cast(batch.column(*c), &DataType::Float64)?;
                Ok(array
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("cast to f64")
                    .clone())
            })
            .collect::<Result<_>>()?;
        for (s, set) in sets.iter().enumerate() {
            let kept: Vec<usize> = (0..groups).filter(|j| !set[*j]).collect();
            let encoded = if kept.is_empty() {
                None
            } else {
                let converter = RowConverter::new(
                    kept.iter()
                        .map(|j| SortField::new(batch.column(*j).data_type().clone()))
                        .collect(),
                )?;
                let columns: Vec<ArrayRef> =
                    kept.iter().map(|j| batch.column(*j).clone()).collect();
                Some(converter.convert_columns(&columns)?)
            };
            for row in 0..batch.num_rows() {
                if pid.is_null(row) {
                    continue;
                }
                let key: &[u8] = encoded.as_ref().map_or(&[], |rows| rows.row(row).data());
                let cell = match cells.index[s].get(key) {
                    Some(cell) => *cell,
                    None => {
                        let cell = cells.first_seen.len() as u32;
                        cells.first_seen.push((s, (b, row)));
                        cells.index[s].insert(key.into(), cell);
                        cell
                    }
                };
                let person: [u8; 16] = pid.value(row).try_into().map_err(|_| {
                    DataFusionError::Internal("disclosure control: pid is not 16 bytes".into())
                })?;
                let slot = *persons.entry((cell, person)).or_insert_with(|| {
                    slot_cell.push(cell);
                    slot_pid.push(person);
                    slot_parts.extend(std::iter::repeat_n(0.0, parts));
                    (slot_cell.len() - 1) as u32
                }) as usize;
                for (k, v) in values.iter().enumerate() {
                    if v.is_valid(row) {
                        slot_parts[slot * parts + k] += v.value(row);
                    }
                }
            }
        }
    }

    // Per cell: its persons and cell key, and each part's contributions.
    let n_cells = cells.first_seen.len();
    let keys = &release.keys.0;
    let mut stats = vec![Cell::default(); n_cells];
    let mut contributions = vec![Contributions::default(); n_cells * parts];
    for (slot, cell) in slot_cell.iter().enumerate() {
        let cell = *cell as usize;
        stats[cell].add(keys.record_key(&slot_pid[slot]));
        for k in 0..parts {
            contributions[cell * parts + k].add(slot_parts[slot * parts + k]);
        }
    }

    let rules = &release.rules;
    let released: Vec<(usize, i64)> = (0..n_cells)
        .filter_map(|c| rules.perturbation(keys, stats[c]).map(|p| (c, p)))
        .collect();
    let mut report = AuditReport {
        released: Report {
            rule: rules.describe(),
            rows_released: released.len(),
            ..Default::default()
        },
        cells_below_threshold: n_cells - released.len(),
        small_cells: released
            .iter()
            .filter(|(c, _)| stats[*c].persons < 2 * rules.min_persons)
            .count(),
    };

    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    // Grouping values, NULL where the cell's set does not group by them.
    let at: Vec<(usize, usize)> = released
        .iter()
        .map(|(c, _)| cells.first_seen[*c].1)
        .collect();
    for (j, field) in schema.fields().iter().take(groups).enumerate() {
        let parts_of: Vec<&dyn Array> = batches.iter().map(|b| b.column(j).as_ref()).collect();
        let values = if at.is_empty() {
            datafusion::arrow::array::new_empty_array(
                batches
                    .first()
                    .map_or(schema.field(j).data_type(), |b| b.column(j).data_type()),
            )
        } else {
            interleave(&parts_of, &at)?
        };
        let hidden: BooleanArray = released
            .iter()
            .map(|(c, _)| Some(sets[cells.first_seen[*c].0][j]))
            .collect();
        let values = nullif(&values, &hidden)?;
        columns.push(cast(&values, field.data_type())?);
    }
    if release.sets.is_some() {
        let ids = grouping_ids(&sets);
        let column: UInt64Array = released
            .iter()
            .map(|(c, _)| Some(ids[cells.first_seen[*c].0]))
            .collect();
        columns.push(cast(
            &(Arc::new(column) as ArrayRef),
            schema.field(groups).data_type(),
        )?);
    }
    let mut part = 0;
    for (measure, measure_parts) in &release.measures {
        let field = schema.field(columns.len());
        let contributions_of = |c: usize, k: usize| &contributions[c * parts + part + k];
        let values: Vec<Option<f64>> = released
            .iter()
            .map(|(c, p)| match measure {
                Measure::Persons => Some(rules.release_persons(stats[*c].persons, *p) as f64),
                Measure::Rows => Some(rules.release_measure(contributions_of(*c, 0), *p, true)),
                Measure::Sum => {
                    let sum = contributions_of(*c, 0);
                    rules
                        .magnitude_sensitive(sum)
                        .is_none()
                        .then(|| rules.release_measure(sum, *p, false))
                }
                Measure::Avg => {
                    let sum = contributions_of(*c, 0);
                    if rules.magnitude_sensitive(sum).is_some() {
                        return None;
                    }
                    let rows = rules.release_measure(contributions_of(*c, 1), *p, true);
                    (rows > 0.0).then(|| rules.release_measure(sum, *p, false) / rows)
                }
            })
            .collect();
        let withheld = values.iter().filter(|v| v.is_none()).count();
        report.released.cells_suppressed += withheld;
        report.released.cells_perturbed += values.len() - withheld;
        let array: ArrayRef = match measure {
            Measure::Persons => Arc::new(
                values
                    .iter()
                    .map(|v| v.map(|v| v as i64))
                    .collect::<Int64Array>(),
            ),
            _ => Arc::new(values.into_iter().collect::<Float64Array>()),
        };
        columns.push(cast(&array, field.data_type())?);
        part += measure_parts.len();
    }
    release.sink.add(report.clone());
    tracing::info!(
        rows_released = report.released.rows_released,
        cells_below_threshold = report.cells_below_threshold,
        cells_withheld = report.released.cells_suppressed,
        "disclosure control applied"
    );
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((batch, report))
}

/// DataFusion's grouping id of each set: per NULL grouping column a bit
/// (the first column highest), and above them the ordinal of a repeated set.
fn grouping_ids(sets: &[Vec<bool>]) -> Vec<u64> {
    let mut seen: std::collections::HashMap<&[bool], u64> = std::collections::HashMap::new();
    sets.iter()
        .map(|set| {
            let semantic = set
                .iter()
                .fold(0u64, |acc, is_null| (acc << 1) | u64::from(*is_null));
            let ordinal = seen.entry(set.as_slice()).or_insert(0);
            let id = semantic | (*ordinal << set.len());
            *ordinal += 1;
            id
        })
        .collect()
}

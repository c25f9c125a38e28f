//! [`DisclosureControl`], the logical node releasing one aggregate, and its
//! physical planning.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, Result};
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::{DisclosureExec, Release};

/// Releases the cells of one aggregate from its per-cell-and-person input.
/// Its schema is the released aggregate's; nothing above it (filters,
/// sorts, limits) is pushed below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisclosureControl {
    input: LogicalPlan,
    schema: DFSchemaRef,
    release: Release,
}

impl PartialOrd for DisclosureControl {
    fn partial_cmp(&self, _other: &Self) -> Option<std::cmp::Ordering> {
        None
    }
}

impl DisclosureControl {
    /// A node releasing `input` (grouping columns, pid, per-person parts)
    /// as rows of `schema`.
    pub fn new(input: LogicalPlan, schema: DFSchema, release: Release) -> Result<Self> {
        Ok(Self {
            input,
            schema: Arc::new(schema),
            release,
        })
    }

    /// How the cells are released.
    pub fn release(&self) -> &Release {
        &self.release
    }
}

impl UserDefinedLogicalNodeCore for DisclosureControl {
    fn name(&self) -> &str {
        "DisclosureControl"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DisclosureControl: measures={:?}, sets={}, {}",
            self.release
                .measures
                .iter()
                .map(|(m, _)| *m)
                .collect::<Vec<_>>(),
            self.release.sets.as_ref().map_or(1, Vec::len),
            self.release.rules.describe()
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let mut node = self.clone();
        node.input = inputs.swap_remove(0);
        Ok(node)
    }
}

/// Plans [`DisclosureControl`] nodes as [`DisclosureExec`].
#[derive(Debug, Default)]
pub struct DisclosurePlanner;

#[async_trait]
impl ExtensionPlanner for DisclosurePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(control) = node.as_any().downcast_ref::<DisclosureControl>() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(DisclosureExec::new(
            physical_inputs[0].clone(),
            Arc::new(control.schema.as_arrow().clone()),
            control.release.clone(),
        ))))
    }
}

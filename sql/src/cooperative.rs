//! Yield points above every operator, so that any running plan can be
//! stopped and never starves the other statements of a process.
//!
//! DataFusion's own `EnsureCooperative` rule puts yield points above leaf
//! operators only. That leaves operators which produce many batches from
//! one input batch — a cross join emits `left × batch` rows from memory —
//! running inside one `poll` for minutes: the task never returns to the
//! scheduler, so neither the client leaving, nor the time limit, nor a
//! shutdown is noticed, and the worker thread is lost to everything else.
//! [`YieldEverywhere`] consumes a unit of the task's scheduling budget for
//! every batch such an operator emits: every join (any operator with more
//! than one input) and `UnnestExec`. The others emit at most about as many
//! batches as they read, and their leaves already yield.
//!
//! Only those are wrapped because physical plans are optimised again when
//! nested (a node's boundary table plans its scan as a plan of its own):
//! projection pushdown through a yield point above every operator grows
//! with the plan's depth.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::unnest::UnnestExec;

/// Wraps every operator that can emit many batches per batch it reads in a
/// [`CooperativeExec`].
#[derive(Debug, Default)]
pub struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let multiplies = node.children().len() > 1 || node.is::<UnnestExec>();
            if !multiplies {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The session defaults every Carrow process plans with: DataFusion's
/// features, then [`YieldEverywhere`] as the last physical rule.
pub fn session_defaults(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(YieldEverywhere))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    async fn physical(sql: &str) -> String {
        let state = session_defaults(SessionStateBuilder::new())
            .with_config(SessionConfig::new().with_target_partitions(1))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.sql("CREATE TABLE t AS VALUES (1), (2), (3)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let frame = ctx.sql(sql).await.unwrap();
        let plan = frame.create_physical_plan().await.unwrap();
        displayable(plan.as_ref()).indent(false).to_string()
    }

    /// Every join and unnest sits under a yield point; other operators
    /// are left alone.
    #[tokio::test]
    async fn every_join_and_unnest_is_under_a_yield_point() {
        for sql in [
            "SELECT sum(a.column1 * b.column1) FROM t a CROSS JOIN t b",
            "SELECT count(*) FROM t a JOIN t b ON a.column1 = b.column1",
            "SELECT count(*) FROM t a JOIN t b ON a.column1 < b.column1",
            "SELECT unnest(make_array(column1, column1)) FROM t",
        ] {
            let plan = physical(sql).await;
            let lines: Vec<&str> = plan.lines().map(str::trim).collect();
            let mut multiplying = 0;
            for (i, line) in lines.iter().enumerate() {
                let wrapped = i > 0 && lines[i - 1].starts_with("CooperativeExec");
                if line.contains("JoinExec") || line.starts_with("UnnestExec") {
                    multiplying += 1;
                    assert!(wrapped, "{line} has no yield point above it:\n{plan}");
                } else if line.starts_with("AggregateExec") || line.starts_with("ProjectionExec") {
                    assert!(!wrapped, "{line} needs no yield point:\n{plan}");
                }
            }
            assert_eq!(multiplying, 1, "{sql}:\n{plan}");
        }
    }

    /// A runtime that never waits for its tasks when dropped, so a test
    /// that fails while a task is stuck fails instead of hanging.
    struct Background(Option<tokio::runtime::Runtime>);

    impl Drop for Background {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }

    /// A cross join far too big to finish lets another task run on the
    /// same single worker, and stops soon after it is dropped.
    #[test]
    fn a_huge_cross_join_lets_other_tasks_run_and_stops_when_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Duration;
        let rt = Background(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        ));
        let runtime = rt.0.as_ref().unwrap();
        let computing = runtime.spawn(async move {
            use futures::StreamExt;
            let state = session_defaults(SessionStateBuilder::new()).build();
            let ctx = SessionContext::new_with_state(state);
            let sql = "SELECT count(*) FROM generate_series(1, 5000) a \
                       CROSS JOIN generate_series(1, 5000) b CROSS JOIN generate_series(1, 5000) c";
            let mut stream = ctx.sql(sql).await?.execute_stream().await?;
            stream.next().await.transpose()
        });
        std::thread::sleep(Duration::from_millis(500));
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        runtime.spawn(async move { flag.store(true, Ordering::SeqCst) });
        // Without yield points the worker would run the join for minutes;
        // with them the other task runs between batches (allow for a busy
        // machine: other tests share the cores).
        let mut waited = Duration::ZERO;
        while !other_ran.load(Ordering::SeqCst) && waited < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
        assert!(!computing.is_finished(), "the join cannot have finished");
        assert!(
            other_ran.load(Ordering::SeqCst),
            "the query starved the worker"
        );
        computing.abort();
        let mut waited = Duration::ZERO;
        while !computing.is_finished() && waited < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
        }
        assert!(
            computing.is_finished(),
            "the query did not stop when dropped"
        );
    }
}

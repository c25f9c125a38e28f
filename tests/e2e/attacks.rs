//! A determined planner against disclosure control: every attack of the
//! outside evaluation, in at least two variants, through a real coordinator
//! over real nodes. Each is refused or its answer protected, checked
//! against the exact answers (an approved extract through the same
//! coordinator, which the ground-truth test shows equal to the generated
//! data's truth): no pseudonym leaves, no count below the threshold is
//! recovered exactly, and no one person's value of a measure is recovered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use arrow_flight::sql::client::FlightSqlServiceClient;
use tonic::transport::Channel;

use crate::coordinator::{CoordinatorProcess, start_coordinator};
use crate::support::{NodeProcess, approved_researcher, client, generate, query, rows};

type Client = FlightSqlServiceClient<Channel>;

/// A region of 6 000 people, its nodes, a coordinator and a planner.
struct Region {
    _dir: tempfile::TempDir,
    _nodes: Vec<NodeProcess>,
    coordinator: CoordinatorProcess,
    planner: Client,
}

impl Region {
    async fn start(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 6_000, seed);
        let nodes: Vec<NodeProcess> = ["acute", "gp", "council"]
            .iter()
            .map(|org| NodeProcess::start(&dir.path().join(format!("{org}/node.toml"))))
            .collect();
        let coordinator = start_coordinator(
            dir.path(),
            &[
                ("acute", &nodes[0]),
                ("gp", &nodes[1]),
                ("council", &nodes[2]),
            ],
        );
        let planner = client(
            coordinator.addr,
            "planner",
            &dir.path().join("secrets/planner.token"),
        )
        .await;
        Self {
            _dir: dir,
            _nodes: nodes,
            coordinator,
            planner,
        }
    }

    fn root(&self) -> &Path {
        self._dir.path()
    }

    fn addr(&self) -> SocketAddr {
        self.coordinator.addr
    }

    /// A researcher allowed to run each of `sqls` as an exact extract.
    async fn exact(&self, sqls: &[&str]) -> Client {
        approved_researcher(self.addr(), self.root(), sqls, "extract").await
    }

    /// The planner's refusal of `sql`, which must name `why`.
    async fn assert_refused(&mut self, sql: &str, why: &str) -> String {
        let err = match query(&mut self.planner, sql).await {
            Ok(batches) => panic!("{sql}\nwas answered: {:?}", rows(&batches)),
            Err(e) => e,
        };
        assert!(
            err.contains("refused by rule `planner query model`") && err.contains(why),
            "{sql}\nexpected {why:?} in: {err}"
        );
        err
    }

    async fn planner_rows(&mut self, sql: &str) -> Vec<Vec<String>> {
        rows(
            &query(&mut self.planner, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        )
    }
}

/// `rows` keyed by their first `key` columns, with the rest.
fn keyed(rows: Vec<Vec<String>>, key: usize) -> BTreeMap<Vec<String>, Vec<String>> {
    rows.into_iter()
        .map(|mut r| {
            let rest = r.split_off(key);
            (r, rest)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_person_count_behind_a_row_cannot_be_faked() {
    let mut region = Region::start(101).await;
    for (sql, why) in [
        // Drop the table's own pid and cross join other people's.
        (
            "SELECT k.weekly_cost, k.start_date, count(DISTINCT c.pid) FROM \
             (SELECT weekly_cost, start_date FROM council.care_packages) k \
             CROSS JOIN (SELECT pid FROM council.clients WHERE sex = 'F') c GROUP BY 1, 2",
            "without joining them on pid",
        ),
        // The same with a self join on a shared value instead of a cross join.
        (
            "SELECT k.weekly_cost, count(DISTINCT k2.pid) FROM council.care_packages k \
             JOIN council.care_packages k2 ON k.area_code = k2.area_code GROUP BY k.weekly_cost",
            "without joining them on pid",
        ),
        // Another organisation's persons joined on a value.
        (
            "SELECT a.primary_diagnosis, count(DISTINCT r.pid) FROM acute.admissions a \
             JOIN gp.registrations r ON a.sex = r.sex GROUP BY 1",
            "without joining them on pid",
        ),
        // Ten other persons' pids chosen by rank.
        (
            "SELECT k.weekly_cost, count(DISTINCT c.pid) FROM council.care_packages k, \
             (SELECT pid FROM council.clients ORDER BY birth_year LIMIT 10) c GROUP BY 1",
            "ORDER BY or LIMIT inside the query",
        ),
        // Constant pids added to a union.
        (
            "SELECT x, count(DISTINCT pid) FROM (SELECT pid, weekly_cost AS x FROM council.care_packages \
             UNION ALL SELECT X'000102030405060708090a0b0c0d0e0f', 1.0) GROUP BY x",
            "pid",
        ),
        // A subquery that drops pid.
        (
            "SELECT weekly_cost, count(*) FROM (SELECT weekly_cost, start_date FROM council.care_packages) GROUP BY 1",
            "drops pid",
        ),
    ] {
        region.assert_refused(sql, why).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn suppressed_cells_release_nothing_of_their_persons() {
    let mut region = Region::start(102).await;
    let exact_costs =
        "SELECT weekly_cost, count(DISTINCT pid) FROM council.care_packages GROUP BY 1";
    let exact_dates = "SELECT start_date, area_code, count(DISTINCT pid) FROM council.care_packages GROUP BY 1, 2";
    let people = "SELECT birth_year, sex, area_code, deprivation_decile, count(*) FROM council.clients GROUP BY 1, 2, 3, 4";
    let mut exact = region.exact(&[exact_costs, exact_dates, people]).await;

    // Grouping by a near-unique column or pair of columns: every row
    // released is about at least 10 persons, whatever its grouping value.
    for (planner_sql, exact_sql, key) in [
        (
            "SELECT weekly_cost, count(*) FROM council.care_packages GROUP BY 1",
            exact_costs,
            1,
        ),
        (
            "SELECT start_date, area_code, sum(weekly_cost) FROM council.care_packages GROUP BY 1, 2",
            exact_dates,
            2,
        ),
    ] {
        let truth = keyed(rows(&query(&mut exact, exact_sql).await.unwrap()), key);
        let released = keyed(region.planner_rows(planner_sql).await, key);
        let small = truth
            .values()
            .filter(|v| v[0].parse::<i64>().unwrap() < 10)
            .count();
        assert!(small > 0, "{planner_sql}: the data has small cells");
        for (group, _) in released {
            let persons: i64 = truth[&group][0].parse().unwrap();
            assert!(
                persons >= 10,
                "{planner_sql}: {group:?} of {persons} persons released"
            );
        }
    }

    // Grouping by any function of pid lists no pseudonym.
    for sql in [
        "SELECT encode(pid, 'hex') AS h, count(*) FROM council.clients GROUP BY 1",
        "SELECT substr(CAST(pid AS VARCHAR), 1, 4) AS h, count(*) FROM gp.registrations GROUP BY 1",
        "SELECT pid, count(*) FROM acute.admissions GROUP BY pid",
    ] {
        region.assert_refused(sql, "pid").await;
    }

    // A filter narrowed to one person and followed into another
    // organisation's table releases nothing.
    let unique: Vec<Vec<String>> = rows(&query(&mut exact, people).await.unwrap())
        .into_iter()
        .filter(|r| r[4] == "1" && r.iter().all(|c| !c.is_empty()))
        .take(3)
        .collect();
    assert!(!unique.is_empty());
    for person in unique {
        for sql in [
            format!(
                "SELECT a.admission_method, count(*) FROM council.clients c JOIN acute.admissions a ON a.pid = c.pid \
                 WHERE c.birth_year = {} AND c.sex = '{}' AND c.area_code = '{}' AND c.deprivation_decile = {} GROUP BY 1",
                person[0], person[1], person[2], person[3]
            ),
            format!(
                "SELECT g.condition, count(DISTINCT g.pid) FROM gp.conditions g, council.clients c WHERE g.pid = c.pid \
                 AND c.birth_year = {} AND c.sex = '{}' AND c.area_code = '{}' AND c.deprivation_decile = {} GROUP BY 1",
                person[0], person[1], person[2], person[3]
            ),
        ] {
            assert!(region.planner_rows(&sql).await.is_empty(), "{sql}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn having_order_by_and_limit_see_released_values_only() {
    let mut region = Region::start(103).await;
    let exact_years = "SELECT birth_year, count(DISTINCT pid) FROM gp.registrations GROUP BY 1";
    let exact_rollup = "SELECT area_code, service_type, count(DISTINCT pid) FROM council.care_packages GROUP BY ROLLUP (area_code, service_type)";
    let mut exact = region.exact(&[exact_years, exact_rollup]).await;
    let years = keyed(rows(&query(&mut exact, exact_years).await.unwrap()), 1);
    assert!(
        years.values().any(|v| v[0].parse::<i64>().unwrap() < 5),
        "some years hold few persons"
    );

    // HAVING as an oracle for exact small counts finds nothing.
    for sql in [
        "SELECT birth_year, count(*) FROM gp.registrations GROUP BY 1 HAVING count(*) = 1",
        "SELECT birth_year, count(DISTINCT pid) AS n FROM gp.registrations GROUP BY 1 HAVING n BETWEEN 1 AND 4",
    ] {
        assert!(region.planner_rows(sql).await.is_empty(), "{sql}");
    }
    // Whatever HAVING, ORDER BY or LIMIT select, every row is a released cell.
    for sql in [
        "SELECT birth_year, count(*) FROM gp.registrations GROUP BY 1 HAVING count(*) < 15",
        "SELECT birth_year, count(*) FROM gp.registrations GROUP BY 1 ORDER BY 2 ASC, 1 LIMIT 3",
        "SELECT birth_year FROM gp.registrations GROUP BY 1 ORDER BY count(*) LIMIT 5 OFFSET 1",
    ] {
        for row in region.planner_rows(sql).await {
            let persons: i64 = years[&vec![row[0].clone()]][0].parse().unwrap();
            assert!(persons >= 10, "{sql}: {row:?} is about {persons} persons");
        }
    }

    // ROLLUP with HAVING: totals are released, but subtracting the released
    // details from a total does not give the withheld cells exactly.
    let truth = keyed(rows(&query(&mut exact, exact_rollup).await.unwrap()), 2);
    let released = keyed(
        region
            .planner_rows(
                "SELECT area_code, service_type, count(DISTINCT pid) FROM council.care_packages \
                 GROUP BY ROLLUP (area_code, service_type) HAVING count(DISTINCT pid) > 0",
            )
            .await,
        2,
    );
    let (mut tried, mut exact_hits) = (0, 0);
    for (key, value) in &released {
        if key[0].is_empty() || !key[1].is_empty() {
            continue;
        }
        let details: Vec<_> = truth
            .keys()
            .filter(|k| k[0] == key[0] && !k[1].is_empty())
            .collect();
        let withheld: Vec<_> = details
            .iter()
            .filter(|k| !released.contains_key(**k))
            .collect();
        if withheld.is_empty() {
            continue;
        }
        let shown: i64 = details
            .iter()
            .filter_map(|k| released.get(*k))
            .map(|v| v[0].parse::<i64>().unwrap())
            .sum();
        let hidden: i64 = withheld
            .iter()
            .map(|k| truth[**k][0].parse::<i64>().unwrap())
            .sum();
        tried += 1;
        exact_hits += usize::from(value[0].parse::<i64>().unwrap() - shown == hidden);
    }
    assert!(tried >= 3, "areas with withheld cells: {tried}");
    assert!(
        exact_hits * 2 < tried,
        "subtraction recovered the withheld cells exactly in {exact_hits} of {tried} areas"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subqueries_and_pseudonyms_as_measures_are_refused_and_no_pid_leaves() {
    let mut region = Region::start(104).await;
    let pids_sql = "SELECT encode(pid, 'hex') FROM council.clients";
    let mut exact = region.exact(&[pids_sql]).await;
    let pids: Vec<String> = rows(&query(&mut exact, pids_sql).await.unwrap())
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let mut answers = String::new();
    for (sql, why) in [
        // Scalar subqueries: in the select list, as a yes/no oracle in
        // WHERE, inside CASE; and their IN and EXISTS cousins.
        (
            "SELECT sex, count(*), (SELECT sum(weekly_cost) FROM council.care_packages WHERE area_code = 'x') FROM gp.registrations GROUP BY sex",
            "scalar subquery",
        ),
        (
            "SELECT sex, count(*) FROM gp.registrations WHERE (SELECT count(*) FROM council.clients WHERE birth_year = 1930) = 1 GROUP BY sex",
            "scalar subquery",
        ),
        (
            "SELECT CASE WHEN (SELECT max(weekly_cost) FROM council.care_packages) > 500 THEN 'y' ELSE 'n' END AS b, count(*) FROM gp.registrations GROUP BY 1",
            "scalar subquery",
        ),
        (
            "SELECT sex, count(*) FROM gp.registrations WHERE deprivation_decile IN (SELECT deprivation_decile FROM council.clients WHERE birth_year = 1930) GROUP BY sex",
            "IN (subquery)",
        ),
        (
            "SELECT sex, count(*) FROM gp.registrations r WHERE EXISTS (SELECT 1 FROM council.clients c WHERE c.pid = r.pid AND c.birth_year = 1930) GROUP BY sex",
            "EXISTS",
        ),
        // Pseudonyms as measures, functions of pid, bit oracles.
        (
            "SELECT sex, min(pid) FROM council.clients GROUP BY sex",
            "min(...) is refused",
        ),
        (
            "SELECT area_code, max(pid) FROM council.care_packages GROUP BY 1",
            "max(...) is refused",
        ),
        (
            "SELECT sex, first_value(pid) FROM council.clients GROUP BY sex",
            "first_value(...) is refused",
        ),
        (
            "SELECT sex, array_agg(pid) FROM acute.admissions GROUP BY sex",
            "array_agg(...) is refused",
        ),
        (
            "SELECT sex, string_agg(encode(pid, 'hex'), ',') FROM gp.registrations GROUP BY sex",
            "is refused",
        ),
        (
            "SELECT sex, count(*) FILTER (WHERE substr(encode(pid, 'hex'), 1, 1) = 'a') FROM council.clients GROUP BY sex",
            "uses pid",
        ),
        (
            "SELECT sex, sum(CASE WHEN encode(pid, 'hex') < '8' THEN 1 ELSE 0 END) FROM council.clients GROUP BY sex",
            "uses pid",
        ),
        (
            "SELECT sex, count(*) FROM council.clients WHERE encode(pid, 'hex') LIKE 'ab%' GROUP BY sex",
            "uses pid",
        ),
        (
            "SELECT length(encode(pid, 'hex')) AS l, count(*) FROM council.clients GROUP BY 1",
            "uses pid",
        ),
    ] {
        answers.push_str(&region.assert_refused(sql, why).await);
    }
    // The queries that are answered carry no pid either.
    for sql in [
        "SELECT sex, count(DISTINCT pid) FROM council.clients GROUP BY sex",
        "SELECT c.sex, count(*) FROM council.clients c JOIN council.care_packages k ON c.pid = k.pid GROUP BY 1",
    ] {
        for row in region.planner_rows(sql).await {
            answers.push_str(&row.join(","));
        }
    }
    for pid in &pids {
        assert!(!answers.contains(pid.as_str()), "pid {pid} left");
        assert!(!answers.contains(&pid[..12]), "part of pid {pid} left");
    }
}

/// How often `estimates` hit the exact value: the attack works only if
/// they do most of the time.
fn exact_share(pairs: &[(f64, f64)]) -> f64 {
    let hits = pairs.iter().filter(|(e, x)| (e - x).abs() < 0.5).count();
    hits as f64 / pairs.len() as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_counts_do_not_survive_rounding_tricks_or_differencing() {
    let mut region = Region::start(105).await;
    let exact_years =
        "SELECT deprivation_decile, birth_year, count(*) FROM gp.registrations GROUP BY 1, 2";
    let exact_deciles = "SELECT deprivation_decile, count(*) FROM gp.registrations GROUP BY 1";
    let mut exact = region.exact(&[exact_years, exact_deciles]).await;
    let deciles = keyed(rows(&query(&mut exact, exact_deciles).await.unwrap()), 1);
    let cells = keyed(rows(&query(&mut exact, exact_years).await.unwrap()), 2);

    // Floats, constant multipliers and self joins give values no finer
    // than a perturbed, rounded count of persons.
    for sql in [
        "SELECT deprivation_decile, sum(1.0) FROM gp.registrations GROUP BY 1",
        "SELECT deprivation_decile, sum(0.2) * 5 FROM gp.registrations GROUP BY 1",
        "SELECT deprivation_decile, count(*) / 5 FROM gp.registrations CROSS JOIN (VALUES (1), (2), (3), (4), (5)) v(x) GROUP BY 1",
        "SELECT r.deprivation_decile, count(*) / 4 FROM gp.registrations r JOIN gp.registrations r2 ON r.pid = r2.pid \
         CROSS JOIN (VALUES (1), (2), (3), (4)) v(x) GROUP BY 1",
    ] {
        let released = keyed(region.planner_rows(sql).await, 1);
        assert_eq!(released.len(), deciles.len(), "{sql}");
        let pairs: Vec<(f64, f64)> = released
            .iter()
            .map(|(k, v)| (v[0].parse().unwrap(), deciles[k][0].parse().unwrap()))
            .collect();
        for (got, want) in &pairs {
            assert!((got - want).abs() <= 7.5, "{sql}: {got} for {want}");
        }
        assert!(
            exact_share(&pairs) < 0.5,
            "{sql}: exact in most cells: {pairs:?}"
        );
    }

    // Complementary filters: a decile's count minus the same count without
    // one birth year, where that year holds 1-9 persons.
    let targets: Vec<(String, String, f64)> = cells
        .iter()
        .filter_map(|(k, v)| {
            let n: f64 = v[0].parse().unwrap();
            (n < 10.0).then(|| (k[0].clone(), k[1].clone(), n))
        })
        .take(24)
        .collect();
    assert!(targets.len() >= 12, "small groups: {}", targets.len());
    let mut pairs = Vec::new();
    let mut overlapping = Vec::new();
    for (decile, year, n) in &targets {
        let whole = region
            .planner_rows(&format!(
                "SELECT count(*) FROM gp.registrations WHERE deprivation_decile = {decile}"
            ))
            .await;
        let without = region
            .planner_rows(&format!(
                "SELECT count(*) FROM gp.registrations WHERE deprivation_decile = {decile} AND birth_year <> {year}"
            ))
            .await;
        let estimate = whole[0][0].parse::<f64>().unwrap() - without[0][0].parse::<f64>().unwrap();
        pairs.push((estimate, *n));
        // The same group as the sum of differences over overlapping cells
        // (each sex separately).
        let mut sum = 0.0;
        for sex in ["M", "F"] {
            let a = region
                .planner_rows(&format!(
                    "SELECT count(*) FROM gp.registrations WHERE deprivation_decile = {decile} AND sex = '{sex}'"
                ))
                .await;
            let b = region
                .planner_rows(&format!(
                    "SELECT count(*) FROM gp.registrations WHERE deprivation_decile = {decile} AND sex = '{sex}' AND birth_year <> {year}"
                ))
                .await;
            if let (Some(a), Some(b)) = (a.first(), b.first()) {
                sum += a[0].parse::<f64>().unwrap() - b[0].parse::<f64>().unwrap();
            }
        }
        overlapping.push((sum, *n));
    }
    assert!(
        exact_share(&pairs) < 0.5,
        "differencing recovered small groups exactly: {pairs:?}"
    );
    assert!(
        exact_share(&overlapping) < 0.5,
        "summing overlapping cells recovered small groups exactly: {overlapping:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_one_persons_value_of_a_measure_is_released() {
    let mut region = Region::start(106).await;
    // Order statistics of a measure, on two tables.
    for (sql, why) in [
        (
            "SELECT area_code, max(weekly_cost) FROM council.care_packages GROUP BY 1",
            "max(...) is refused",
        ),
        (
            "SELECT area_code, min(weekly_cost) FROM council.care_packages GROUP BY 1",
            "min(...) is refused",
        ),
        (
            "SELECT service_type, median(weekly_cost) FROM council.care_packages GROUP BY 1",
            "median(...) is refused",
        ),
        (
            "SELECT sex, max(birth_year) FROM acute.admissions GROUP BY 1",
            "max(...) is refused",
        ),
        (
            "SELECT sex, approx_percentile_cont(birth_year, 0.99) FROM gp.registrations GROUP BY 1",
            "is refused",
        ),
        (
            "SELECT sex, first_value(weekly_cost ORDER BY weekly_cost DESC) FROM council.care_packages GROUP BY 1",
            "first_value(...) is refused",
        ),
    ] {
        region.assert_refused(sql, why).await;
    }

    // An average (or a sum) with and without one person: pick persons the
    // planner can single out by their attributes, and try to get their cost.
    let persons_sql = "SELECT area_code, birth_year, sex, deprivation_decile, count(DISTINCT pid), sum(weekly_cost) \
                       FROM council.care_packages GROUP BY 1, 2, 3, 4";
    let areas_sql = "SELECT area_code, count(DISTINCT pid) FROM council.care_packages GROUP BY 1";
    let mut exact = region.exact(&[persons_sql, areas_sql]).await;
    let areas = keyed(rows(&query(&mut exact, areas_sql).await.unwrap()), 1);
    let singled: Vec<Vec<String>> = rows(&query(&mut exact, persons_sql).await.unwrap())
        .into_iter()
        .filter(|r| r[4] == "1" && r[..4].iter().all(|c| !c.is_empty()))
        .filter(|r| areas[&vec![r[0].clone()]][0].parse::<i64>().unwrap() >= 25)
        .take(10)
        .collect();
    assert!(
        singled.len() >= 5,
        "persons to single out: {}",
        singled.len()
    );
    let (mut by_avg, mut by_sum) = (Vec::new(), Vec::new());
    for p in &singled {
        let truth: f64 = p[5].parse().unwrap();
        let not_p = format!(
            "NOT (birth_year = {} AND sex = '{}' AND deprivation_decile = {})",
            p[1], p[2], p[3]
        );
        let ask = |filter: String| {
            format!(
                "SELECT avg(weekly_cost), count(*), sum(weekly_cost) FROM council.care_packages WHERE area_code = '{}' {filter}",
                p[0]
            )
        };
        let with = region.planner_rows(&ask(String::new())).await;
        let without = region.planner_rows(&ask(format!("AND {not_p}"))).await;
        let number = |rows: &[Vec<String>], i: usize| rows[0][i].parse::<f64>().ok();
        if let (Some(a1), Some(n1), Some(a2), Some(n2)) = (
            number(&with, 0),
            number(&with, 1),
            number(&without, 0),
            number(&without, 1),
        ) {
            by_avg.push((a1 * n1 - a2 * n2, truth));
        }
        if let (Some(s1), Some(s2)) = (number(&with, 2), number(&without, 2)) {
            by_sum.push((s1 - s2, truth));
        }
    }
    for (what, pairs) in [("avg", &by_avg), ("sum", &by_sum)] {
        let close = pairs
            .iter()
            .filter(|(estimate, truth)| (estimate - truth).abs() <= 0.01 * truth.abs().max(1.0))
            .count();
        assert!(
            close * 2 < pairs.len().max(1),
            "{what} with and without one person gave their cost within 1% in {close} of {}: {pairs:?}",
            pairs.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_of_controlled_queries_quote_no_data_and_answer_nothing() {
    let mut region = Region::start(107).await;
    let costs_sql = "SELECT DISTINCT CAST(weekly_cost AS VARCHAR) FROM council.care_packages";
    let years_sql = "SELECT DISTINCT birth_year FROM council.clients";
    let mut exact = region.exact(&[costs_sql, years_sql]).await;
    let costs: Vec<String> = rows(&query(&mut exact, costs_sql).await.unwrap())
        .into_iter()
        .map(|r| r[0].clone())
        .filter(|c| c.len() >= 4)
        .collect();
    assert!(!costs.is_empty());
    let year: String = rows(&query(&mut exact, years_sql).await.unwrap())[0][0].clone();
    let mut messages = String::new();
    // Functions that can fail on a value are refused before anything runs,
    // at a node (the aggregate is pushed down) or at the coordinator.
    for sql in [
        "SELECT area_code, count(*) FROM council.care_packages WHERE to_date(CAST(weekly_cost AS VARCHAR)) > DATE '2020-01-01' GROUP BY 1",
        "SELECT k.area_code, count(*) FROM council.care_packages k JOIN acute.admissions a ON a.pid = k.pid \
         WHERE make_date(a.birth_year, 1, CAST(k.weekly_cost AS INT)) > DATE '2020-01-01' GROUP BY 1",
        "SELECT area_code, count(*) FROM council.clients WHERE chr(birth_year * 1000) = 'x' GROUP BY 1",
    ] {
        messages.push_str(
            &region
                .assert_refused(sql, "is not among the functions")
                .await,
        );
    }
    // Whether a query fails is no oracle: a division by a value that is
    // zero for someone, or a cast that fails for someone, answers as usual.
    for sql in [
        format!(
            "SELECT sex, count(*) FROM council.clients WHERE 1 / (birth_year - {year}) >= 0 GROUP BY sex"
        ),
        format!(
            "SELECT sex, count(*) FROM council.clients WHERE birth_year % (birth_year - {year}) >= 0 GROUP BY sex"
        ),
        format!(
            "SELECT sex, count(*) FROM council.clients WHERE CAST(CASE WHEN birth_year = {year} THEN 'x' ELSE '1' END AS INT) = 1 GROUP BY sex"
        ),
        format!(
            "SELECT k.sex, sum(k.weekly_cost / (a.birth_year - {year})) FROM council.care_packages k \
             JOIN acute.admissions a ON a.pid = k.pid GROUP BY 1"
        ),
    ] {
        let answer = query(&mut region.planner, &sql).await;
        assert!(answer.is_ok(), "{sql}: {answer:?}");
    }
    // An error over released values (after control) is reported by kind only.
    let err = query(
        &mut region.planner,
        "SELECT sex, count(*) / (count(*) - count(*)) FROM council.care_packages GROUP BY sex",
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("division by zero") && err.contains("withheld"),
        "{err}"
    );
    messages.push_str(&err);
    for cost in &costs {
        assert!(
            !messages.contains(cost.as_str()),
            "an error quotes {cost}: {messages}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn researchers_aggregate_approvals_get_the_same_control() {
    let region = Region::start(108).await;
    let counts = "SELECT birth_year, count(*) FROM gp.registrations GROUP BY birth_year";
    let maxima = "SELECT area_code, max(weekly_cost) FROM council.care_packages GROUP BY area_code";
    let mut aggregate =
        approved_researcher(region.addr(), region.root(), &[counts, maxima], "aggregate").await;
    // The exact answer under another approval (its own SQL text).
    let exact_counts = "SELECT birth_year, count(*) AS n FROM gp.registrations GROUP BY birth_year";
    let mut extract = region.exact(&[exact_counts]).await;
    let truth = keyed(rows(&query(&mut extract, exact_counts).await.unwrap()), 1);
    let released = keyed(rows(&query(&mut aggregate, counts).await.unwrap()), 1);
    assert!(released.len() < truth.len(), "small years are withheld");
    for (year, value) in &released {
        let exact: i64 = truth[year][0].parse().unwrap();
        assert!(
            exact >= 10 && crate::support::released_near(&value[0], exact),
            "{year:?}"
        );
    }
    let err = query(&mut aggregate, maxima).await.unwrap_err();
    assert!(err.contains("max(...) is refused"), "{err}");
}

//! Spend reports: grouping the rollups of a date range by project, model, day and/or
//! key, and the report's JSON shape (README, "Spend ledger").

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::de::Error as _;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::Date;

use super::line::{day_string, parse_day};
use super::rollup::{self, Counters};
use super::SpendError;
use crate::store::Store;

pub use super::render::{printable, render_csv, render_json, render_table};

/// A report dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dim {
    Project,
    Model,
    Day,
    Key,
    /// The daemon a line came from: team reports only.
    Daemon,
}

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Project => "project",
            Dim::Model => "model",
            Dim::Day => "day",
            Dim::Key => "key",
            Dim::Daemon => "daemon",
        }
    }
}

impl FromStr for Dim {
    type Err = SpendError;
    fn from_str(s: &str) -> Result<Dim, SpendError> {
        match s {
            "project" => Ok(Dim::Project),
            "model" => Ok(Dim::Model),
            "day" => Ok(Dim::Day),
            "key" => Ok(Dim::Key),
            "daemon" => Ok(Dim::Daemon),
            other => Err(SpendError::BadReport(format!(
                "unknown dimension {other:?}: expected project, model, day, key or daemon"
            ))),
        }
    }
}

/// What to report: grouping, an inclusive UTC date range, one project or all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportQuery {
    pub by: Vec<Dim>,
    pub since: Option<Date>,
    pub until: Option<Date>,
    pub project: Option<String>,
}

/// One group: the values of the `by` dimensions (in `by` order; null when the ledger
/// had none, e.g. no model) and its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub dims: Vec<Option<String>>,
    pub counters: Counters,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub by: Vec<Dim>,
    pub since: Option<Date>,
    pub until: Option<Date>,
    /// By cost, highest first, then by the dimension values.
    pub rows: Vec<Row>,
    pub total: Counters,
}

/// Money sums are rounded to 12 decimal places to drop float noise.
fn round12(v: f64) -> f64 {
    (v * 1e12).round() / 1e12
}

fn rounded(mut c: Counters) -> Counters {
    c.cost = round12(c.cost);
    c.saved = round12(c.saved);
    c
}

/// Builds a report from the rollups (a key-range scan over the date range).
pub fn build(store: &Store, q: &ReportQuery) -> Result<Report, SpendError> {
    let by = q.dims();
    if by.contains(&Dim::Daemon) {
        return Err(SpendError::BadReport(
            "by daemon is for the team report (team=1, chatcache spend --team)".into(),
        ));
    }
    let since = q.since.map(day_string);
    let until = q.until.map(day_string);
    let mut groups: BTreeMap<Vec<Option<String>>, Counters> = BTreeMap::new();
    let empty_range = matches!((q.since, q.until), (Some(s), Some(u)) if s > u);
    if !empty_range {
        rollup::scan(store, since.as_deref(), until.as_deref(), |g, c| {
            if q.project.as_ref().is_some_and(|p| *p != g.project) {
                return;
            }
            let dims = by
                .iter()
                .map(|d| match d {
                    Dim::Project => Some(g.project.clone()),
                    Dim::Model => g.model.clone(),
                    Dim::Day => Some(g.day.clone()),
                    Dim::Key => g.key.clone(),
                    Dim::Daemon => None,
                })
                .collect();
            groups.entry(dims).or_default().add(&c);
        })?;
    }
    Ok(from_groups(by, q, groups))
}

impl ReportQuery {
    /// The `by` dimensions, each once, in the order first given.
    pub fn dims(&self) -> Vec<Dim> {
        let mut by: Vec<Dim> = Vec::new();
        for d in &self.by {
            if !by.contains(d) {
                by.push(*d);
            }
        }
        by
    }
}

/// The report of counters grouped by the values of `by`: totals, rounding, row order.
pub fn from_groups(
    by: Vec<Dim>,
    q: &ReportQuery,
    groups: impl IntoIterator<Item = (Vec<Option<String>>, Counters)>,
) -> Report {
    let mut total = Counters::default();
    let mut rows: Vec<Row> = groups
        .into_iter()
        .inspect(|(_, c)| total.add(c))
        .map(|(dims, c)| Row {
            dims,
            counters: rounded(c),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.counters
            .cost
            .total_cmp(&a.counters.cost)
            .then_with(|| a.dims.cmp(&b.dims))
    });
    Report {
        by,
        since: q.since,
        until: q.until,
        rows,
        total: rounded(total),
    }
}

fn serialize_counters<M: SerializeMap>(m: &mut M, c: &Counters) -> Result<(), M::Error> {
    m.serialize_entry("requests", &c.requests)?;
    m.serialize_entry("upstream_requests", &c.upstream_requests)?;
    m.serialize_entry("cache_hits", &c.cache_hits)?;
    m.serialize_entry("input_tokens", &c.input_tokens)?;
    m.serialize_entry("output_tokens", &c.output_tokens)?;
    m.serialize_entry("cost", &c.cost)?;
    m.serialize_entry("saved", &c.saved)
}

struct RowOut<'a>(&'a [Dim], &'a Row);

impl Serialize for RowOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len() + 7))?;
        for (d, v) in self.0.iter().zip(&self.1.dims) {
            m.serialize_entry(d.name(), v)?;
        }
        serialize_counters(&mut m, &self.1.counters)?;
        m.end()
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rows: Vec<RowOut<'_>> = self.rows.iter().map(|r| RowOut(&self.by, r)).collect();
        let mut st = s.serialize_struct("Report", 5)?;
        st.serialize_field("by", &self.by)?;
        st.serialize_field("since", &self.since.map(day_string))?;
        st.serialize_field("until", &self.until.map(day_string))?;
        st.serialize_field("rows", &rows)?;
        st.serialize_field("total", &self.total)?;
        st.end()
    }
}

#[derive(Deserialize)]
struct RawReport {
    by: Vec<Dim>,
    since: Option<String>,
    until: Option<String>,
    rows: Vec<serde_json::Map<String, serde_json::Value>>,
    total: Counters,
}

impl<'de> Deserialize<'de> for Report {
    /// Reads the JSON shape back (e.g. a report fetched from a running daemon).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Report, D::Error> {
        let raw = RawReport::deserialize(d)?;
        let date = |s: Option<String>| -> Result<Option<Date>, D::Error> {
            s.map(|s| parse_day(&s).ok_or_else(|| D::Error::custom(format!("bad date {s:?}"))))
                .transpose()
        };
        let mut rows = Vec::with_capacity(raw.rows.len());
        for map in raw.rows {
            let dims = raw
                .by
                .iter()
                .map(|d| map.get(d.name()).and_then(|v| v.as_str()).map(String::from))
                .collect();
            let counters =
                serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
            rows.push(Row { dims, counters });
        }
        Ok(Report {
            by: raw.by,
            since: date(raw.since)?,
            until: date(raw.until)?,
            rows,
            total: raw.total,
        })
    }
}

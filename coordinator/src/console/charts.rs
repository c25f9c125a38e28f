//! Charts drawn on the server as SVG (no script, nothing fetched): a
//! horizontal bar chart, and one with each bar stacked by series.

use maud::{Markup, html};

/// Fill colours of stacked series, in order.
const COLOURS: [&str; 6] = [
    "#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#718096",
];
const WIDTH: f64 = 640.0;
const LABEL: f64 = 200.0;
const BAR: f64 = 22.0;

fn scale(max: f64) -> f64 {
    if max <= 0.0 {
        0.0
    } else {
        (WIDTH - LABEL - 70.0) / max
    }
}

/// One bar per `(label, value)`, labelled with its value.
pub fn bars(title: &str, items: &[(String, f64)]) -> Markup {
    let max = items.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let k = scale(max);
    let height = (items.len().max(1) as f64) * (BAR + 6.0) + 10.0;
    html! {
        figure {
            figcaption { (title) }
            @if items.is_empty() {
                p.empty { "nothing recorded yet" }
            } @else {
                svg xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height)
                    role="img" aria-label=(title) {
                    @for (i, (label, value)) in items.iter().enumerate() {
                        @let y = 5.0 + i as f64 * (BAR + 6.0);
                        text x=(LABEL - 6.0) y=(y + BAR * 0.7) text-anchor="end" font-size="12" { (label) }
                        rect x=(LABEL) y=(y) width=(value * k) height=(BAR) fill=(COLOURS[0]) {}
                        text x=(LABEL + value * k + 4.0) y=(y + BAR * 0.7) font-size="12" { (value) }
                    }
                }
            }
        }
    }
}

/// One bar per row label, stacked by series, with a legend.
pub fn stacked(title: &str, series: &[String], rows: &[(String, Vec<f64>)]) -> Markup {
    let max = rows
        .iter()
        .map(|(_, values)| values.iter().sum::<f64>())
        .fold(0.0, f64::max);
    let k = scale(max);
    let height = (rows.len().max(1) as f64) * (BAR + 6.0) + 34.0;
    html! {
        figure {
            figcaption { (title) }
            @if rows.is_empty() {
                p.empty { "nothing recorded yet" }
            } @else {
                svg xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height)
                    role="img" aria-label=(title) {
                    @for (s, name) in series.iter().enumerate() {
                        rect x=(LABEL + s as f64 * 110.0) y="4" width="12" height="12" fill=(COLOURS[s % COLOURS.len()]) {}
                        text x=(LABEL + s as f64 * 110.0 + 16.0) y="14" font-size="12" { (name) }
                    }
                    @for (i, (label, values)) in rows.iter().enumerate() {
                        @let y = 28.0 + i as f64 * (BAR + 6.0);
                        text x=(LABEL - 6.0) y=(y + BAR * 0.7) text-anchor="end" font-size="12" { (label) }
                        @for (s, value) in values.iter().enumerate() {
                            @let x = LABEL + values[..s].iter().sum::<f64>() * k;
                            rect x=(x) y=(y) width=(value * k) height=(BAR) fill=(COLOURS[s % COLOURS.len()]) {
                                title { (series[s]) ": " (value) }
                            }
                        }
                        text x=(LABEL + values.iter().sum::<f64>() * k + 4.0) y=(y + BAR * 0.7) font-size="12" {
                            (values.iter().sum::<f64>())
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_bars_scale_to_the_largest() {
        let svg = bars(
            "refusals",
            &[("<script>".to_string(), 4.0), ("roles".to_string(), 2.0)],
        )
        .into_string();
        assert!(
            svg.contains("&lt;script&gt;") && !svg.contains("<script>"),
            "{svg}"
        );
        let widths: Vec<f64> = svg
            .split("width=\"")
            .skip(2)
            .filter_map(|w| w.split('"').next()?.parse().ok())
            .collect();
        assert_eq!(widths.len(), 2, "{svg}");
        assert!((widths[0] - 2.0 * widths[1]).abs() < 1e-9, "{widths:?}");
        let stacked = stacked(
            "per day",
            &["planner".into(), "researcher".into()],
            &[("2026-12-01".into(), vec![3.0, 1.0])],
        )
        .into_string();
        assert!(
            stacked.contains("planner") && stacked.contains(">4<"),
            "{stacked}"
        );
    }
}

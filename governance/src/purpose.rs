//! Projects' purposes: whether the national data opt-out applies to a
//! project (research and planning: yes) or on what basis it does not, and
//! whether it is direct care (type 1 opt-outs then do not keep GP data
//! back). Nodes enforce them; the coordinator shows and audits them.

use serde::{Deserialize, Serialize};

/// Why a project may use data despite objections: it names its basis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPurpose {
    /// The legal basis on which the national data opt-out does not apply
    /// (for example "direct care", "section 251 support, CAG 21/CAG/0001").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_out_exempt: Option<String>,
    /// Direct care: type 1 opt-outs do not keep GP data back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub direct_care: bool,
}

//! The `[[mask]]` entries of a policy, compiled: who a mask applies to (its `[mask.match]`)
//! and what it masks (column rules, detectors, a strategy).
//!
//! Why this is its own file: masking rules grow with every protocol (SQL columns, JSON paths,
//! Kubernetes Secrets) while the rule matcher in `policy/mod.rs` grows with command kinds;
//! keeping them apart keeps each readable. `Policy::masking` (in `mod.rs`) turns the masks
//! that apply to a session into a [`crate::mask::Masking`].

use std::sync::Arc;

use super::{file::MaskFile, Matcher};
use crate::mask::{detect::Detector, ColumnRule, FieldRule, Strategy};

/// A compiled `[[mask]]` entry.
#[derive(Debug)]
pub(super) struct MaskRule {
    pub(super) name: String,
    pub(super) matcher: Matcher,
    pub(super) columns: Option<Arc<ColumnRule>>,
    /// JSON paths and Kubernetes Secrets: the values it masks in JSON documents.
    pub(super) fields: Option<Arc<FieldRule>>,
    pub(super) detectors: Vec<Detector>,
    pub(super) strategy: Strategy,
    pub(super) deny_transformed: bool,
}

impl MaskRule {
    pub(super) fn compile(m: MaskFile) -> Result<MaskRule, String> {
        if m.name.trim().is_empty() {
            return Err("a mask needs a name".to_owned());
        }
        if m.columns.is_empty()
            && m.json_paths.is_empty()
            && !m.kubernetes_secrets
            && m.detectors.is_empty()
        {
            return Err(
                "a mask needs `columns`, `json_paths`, `kubernetes_secrets` or `detectors`"
                    .to_owned(),
            );
        }
        let matcher = Matcher::compile(&m.matches)?;
        if matcher.about_commands {
            return Err(
                "[mask.match] takes identity and target keys only (users, groups, exes, units, cgroups, runs, targets, protocols)"
                    .to_owned(),
            );
        }
        let mut detectors = Vec::new();
        for name in &m.detectors {
            let group = Detector::parse_group(name).ok_or_else(|| {
                format!(
                    "unknown detector {name:?} (known: {}, and the groups pii, secrets, all)",
                    Detector::ALL.map(Detector::name).join(", ")
                )
            })?;
            for d in group {
                if !detectors.contains(&d) {
                    detectors.push(d);
                }
            }
        }
        let columns = if m.columns.is_empty() {
            None
        } else {
            Some(Arc::new(ColumnRule::new(&m.name, &m.columns, m.strategy)?))
        };
        let fields = if m.json_paths.is_empty() && !m.kubernetes_secrets {
            None
        } else {
            Some(Arc::new(FieldRule::new(
                &m.name,
                &m.json_paths,
                m.kubernetes_secrets,
                m.strategy,
            )?))
        };
        Ok(MaskRule {
            name: m.name,
            matcher,
            columns,
            fields,
            detectors,
            strategy: m.strategy,
            deny_transformed: m.deny_transformed,
        })
    }
}

#[cfg(test)]
mod tests;

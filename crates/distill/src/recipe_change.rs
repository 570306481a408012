//! `--resume` with a recipe that is not the one the run was started with: each changed field
//! is named with what it changes (each recipe section says that of its fields:
//! `recipe::on_resume`). Fields that only change what is logged, evaluated or kept
//! are accepted; the others change the result (the resumed run is no longer the run an
//! uninterrupted one would have been: e.g. `training.max_steps` 150 -> 40 re-times the
//! learning-rate schedule) and are refused unless the user confirms with
//! `--allow-recipe-change` (`TrainOptions::allow_recipe_change`).
//!
//! The run's recipe is `output_dir/recipe.json`, written when the run (or its last resume)
//! started, with `training.max_steps` as that run applied it (`--max-steps` included).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::TrainError;
use crate::recipe::{on_resume, Recipe};

/// One field that differs between the run's recipe and this one.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeChange {
    pub field: String,
    pub before: String,
    pub after: String,
    pub effect: &'static str,
    /// Whether the resumed run still trains the weights the uninterrupted run would have.
    pub harmless: bool,
}

impl std::fmt::Display for RecipeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} -> {} (changes {})",
            self.field, self.before, self.after, self.effect
        )
    }
}

/// The fields that differ between `before` and `after`, in field order.
pub fn recipe_changes(before: &Value, after: &Value) -> Vec<RecipeChange> {
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    flatten("", before, &mut old);
    flatten("", after, &mut new);
    let fields: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    fields
        .into_iter()
        .filter(|field| old.get(*field) != new.get(*field))
        .map(|field| {
            let shown = |v: Option<&Value>| v.map_or("(unset)".to_string(), Value::to_string);
            let (harmless, effect) = on_resume(field);
            RecipeChange {
                field: field.clone(),
                before: shown(old.get(field)),
                after: shown(new.get(field)),
                effect,
                harmless,
            }
        })
        .collect()
}

/// Leaves of a JSON tree under dotted names (arrays are compared whole).
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// Compares `recipe` with the run's recorded recipe (`recorded`), prints every change, and
/// refuses result-changing ones unless `allow`.
pub fn check_recipe_change(
    recorded: &Path,
    recipe: &Recipe,
    allow: bool,
) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(recorded) else {
        eprintln!(
            "warning: --resume: {} is missing; the recipe cannot be compared with the run's",
            recorded.display()
        );
        return Ok(());
    };
    let before: Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Invalid(format!("{}: not a recipe: {e}", recorded.display())))?;
    // Read back through the recipe's own types where they accept it, so spellings that mean
    // the same (`kd_loss_type = "ce"` and `"kl"`) do not count as changes.
    let before = serde_json::from_value::<Recipe>(before.clone())
        .map(|recipe| serde_json::to_value(recipe).expect("a recipe serialises"))
        .unwrap_or(before);
    let after = serde_json::to_value(recipe).expect("a recipe serialises");
    let changes = recipe_changes(&before, &after);
    if changes.is_empty() {
        return Ok(());
    }
    for change in &changes {
        eprintln!("--resume: recipe changed since the run started: {change}");
    }
    let breaking: Vec<String> = changes
        .iter()
        .filter(|c| !c.harmless)
        .map(|c| c.field.clone())
        .collect();
    if breaking.is_empty() || allow {
        return Ok(());
    }
    Err(TrainError::Invalid(format!(
        "--resume: the recipe differs from the run's ({}) in {}, which change the result: the \
         resumed run would no longer be the run it continues. Restore the run's values, or pass \
         --allow-recipe-change to continue with the new ones",
        recorded.display(),
        breaking.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_each_changed_field_and_whether_it_changes_the_result() {
        let before = json!({"training": {"max_steps": 150, "logging_steps": 10, "seed": 1}});
        let after = json!({"training": {"max_steps": 40, "logging_steps": 5, "seed": 1}});
        let changes = recipe_changes(&before, &after);
        let fields: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.field.as_str(), c.harmless))
            .collect();
        assert_eq!(
            fields,
            [
                ("training.logging_steps", true),
                ("training.max_steps", false)
            ]
        );
        assert!(
            changes[1].to_string().contains("150 -> 40"),
            "{}",
            changes[1]
        );
        assert!(
            changes[1].to_string().contains("schedule"),
            "{}",
            changes[1]
        );
    }
}

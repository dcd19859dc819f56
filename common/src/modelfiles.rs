//! Is a model directory complete? One rule, shared by storage-setup and start-model:
//! `config.json`, a tokenizer, and every weight shard `model.safetensors.index.json` names (or
//! at least one `*.safetensors` / `*.bin` when there is no index).

use std::collections::BTreeSet;
use std::path::Path;

/// Files that count as "a tokenizer".
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "tiktoken.model",
];

/// The index that names the weight shards.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// What a complete directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub weights: Vec<String>,
}

/// Check a model directory; `Err` lists every problem, one line each.
pub fn check_model_dir(dir: &Path) -> Result<ModelFiles, Vec<String>> {
    let d = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => return Err(vec![format!("model directory {d}: {e}")]),
    };
    if !meta.is_dir() {
        return Err(vec![format!("model directory {d}: not a directory")]);
    }
    let names: BTreeSet<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => return Err(vec![format!("model directory {d}: cannot list: {e}")]),
    };
    let mut problems = vec![];
    if !names.contains("config.json") {
        problems.push(format!("model directory {d}: config.json is missing"));
    }
    if !TOKENIZER_FILES.iter().any(|t| names.contains(*t)) {
        problems.push(format!(
            "model directory {d}: no tokenizer (none of {})",
            TOKENIZER_FILES.join(", ")
        ));
    }
    let mut weights = vec![];
    if names.contains(SAFETENSORS_INDEX) {
        let idx = dir.join(SAFETENSORS_INDEX);
        match std::fs::read_to_string(&idx)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).map_err(|e| e.to_string()))
        {
            Err(e) => problems.push(format!("{}: unreadable index: {e}", idx.display())),
            Ok(v) => {
                let shards: BTreeSet<String> = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .map(|m| {
                        m.values()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if shards.is_empty() {
                    problems.push(format!("{}: weight_map names no shard", idx.display()));
                }
                for s in shards {
                    if s.contains('/') || s.contains("..") {
                        problems.push(format!(
                            "{}: shard name {s:?} leaves the directory",
                            idx.display()
                        ));
                    } else if !dir.join(&s).is_file() {
                        problems.push(format!(
                            "model directory {d}: weight shard {s} named by {SAFETENSORS_INDEX} is missing"
                        ));
                    } else {
                        weights.push(s);
                    }
                }
            }
        }
    } else {
        weights = names
            .iter()
            .filter(|n| n.ends_with(".safetensors") || n.ends_with(".bin"))
            .cloned()
            .collect();
        if weights.is_empty() {
            problems.push(format!(
                "model directory {d}: no weights (no {SAFETENSORS_INDEX}, no *.safetensors, no *.bin)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(ModelFiles { weights })
    } else {
        Err(problems)
    }
}

/// Write a small complete model directory (tests and the demo).
pub fn write_fake_model(dir: &Path, shards: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        "{\"architectures\":[\"LlamaForCausalLM\"]}\n",
    )?;
    std::fs::write(dir.join("tokenizer.json"), "{}\n")?;
    std::fs::write(dir.join("tokenizer_config.json"), "{}\n")?;
    let mut map = serde_json::Map::new();
    for i in 1..=shards {
        let name = format!("model-{i:05}-of-{shards:05}.safetensors");
        std::fs::write(dir.join(&name), b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")?;
        map.insert(format!("layer.{i}.weight"), serde_json::Value::String(name));
    }
    let idx = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join(SAFETENSORS_INDEX), idx.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_directory_passes() {
        let d = tempfile::tempdir().unwrap();
        write_fake_model(d.path(), 2).unwrap();
        assert_eq!(check_model_dir(d.path()).unwrap().weights.len(), 2);
    }

    #[test]
    fn a_missing_shard_is_named() {
        let d = tempfile::tempdir().unwrap();
        write_fake_model(d.path(), 3).unwrap();
        std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).unwrap();
        let p = check_model_dir(d.path()).unwrap_err();
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("model-00002-of-00003.safetensors"), "{p:?}");
    }

    #[test]
    fn missing_config_tokenizer_and_weights_are_all_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = check_model_dir(d.path()).unwrap_err();
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn plain_bin_weights_without_index_are_enough() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        std::fs::write(d.path().join("tokenizer.model"), "x").unwrap();
        std::fs::write(d.path().join("pytorch_model.bin"), "x").unwrap();
        assert!(check_model_dir(d.path()).is_ok());
    }

    #[test]
    fn a_missing_directory_is_one_line() {
        let p = check_model_dir(Path::new("/nonexistent/model")).unwrap_err();
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("/nonexistent/model"));
    }
}

//! Recipes: which format and solver each tensor gets, as an ordered list of rules over the
//! model's own tensor names (first match wins).
//!
//! On the command line a rule is `--scheme PATTERN=FORMAT[@SOLVER]`, e.g.
//! `--scheme 'blk.*.ffn_down=q6_k'` or `--scheme 'blk.0.*=q8_0@rtn'`. In a TOML recipe file
//! (`--recipe FILE`) the rules are an array of tables:
//!
//! ```toml
//! [[rule]]
//! pattern = "blk.*.ffn_down"   # glob: `*` any run of characters, `?` one character
//! format = "q6_k"              # a format spec (see `quantsmith formats list`)
//! solver = "gptq"              # optional: rtn | gptq (default: the run's --method)
//! ```
//!
//! A recipe file may also name the run's rewrites and what runs between the weights, the same
//! settings as `--rotate`, `--transform`, `--act` and `--kv` (the command line's take
//! precedence):
//!
//! ```toml
//! rotate = "hadamard:online"
//! transform = ["smoothquant:0.5"]
//! act = "int8"
//! kv = "int4"
//! ```
//!
//! A pattern matches a tensor's full name or its name without the `.weight` suffix. Rules
//! from `--scheme` come before those of the recipe file; tensors no rule matches keep the
//! preset's choice. A rule that matches no tensor is an error (a typo, not a no-op).

use std::path::Path;

use serde::Deserialize;

use crate::solve::Method;
use crate::{Error, Result};

/// One rule: tensors matching `pattern` get `format` (and `solver`, when given).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Glob over tensor names.
    pub pattern: String,
    /// Format spec.
    pub format: String,
    /// Solver name (`rtn`, `gptq`), or the run's default.
    #[serde(default)]
    pub solver: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    #[serde(default)]
    rule: Vec<Rule>,
    #[serde(default)]
    rotate: Option<String>,
    #[serde(default)]
    transform: Vec<String>,
    #[serde(default)]
    act: Option<String>,
    #[serde(default)]
    kv: Option<String>,
}

/// The run settings a recipe file may carry besides its rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipeSettings {
    /// `rotate = "KIND[:…]"`.
    pub rotate: Option<String>,
    /// `transform = [...]`.
    pub transforms: Vec<String>,
    /// `act = "FORMAT"`.
    pub act: Option<String>,
    /// `kv = "FORMAT"`.
    pub kv: Option<String>,
}

impl Rule {
    /// Parses `PATTERN=FORMAT[@SOLVER]`.
    pub fn parse_scheme(s: &str) -> Result<Rule> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| Error::Other(format!("--scheme `{s}`: expected PATTERN=FORMAT[@SOLVER]")))?;
        let (format, solver) = match rest.split_once('@') {
            Some((f, s)) => (f, Some(s.to_string())),
            None => (rest, None),
        };
        if pattern.is_empty() || format.is_empty() {
            return Err(Error::Other(format!("--scheme `{s}`: expected PATTERN=FORMAT[@SOLVER]")));
        }
        let r = Rule { pattern: pattern.to_string(), format: format.to_string(), solver };
        r.check(&format!("--scheme `{s}`"))?;
        Ok(r)
    }

    fn check(&self, ctx: &str) -> Result<()> {
        formats::format::Format::parse(&self.format).map_err(|e| Error::Other(format!("{ctx}: {e}")))?;
        if let Some(s) = &self.solver {
            parse_solver(s).map_err(|e| Error::Other(format!("{ctx}: {e}")))?;
        }
        Ok(())
    }

    /// Whether the rule applies to tensor `name`.
    pub fn matches(&self, name: &str) -> bool {
        glob_match(&self.pattern, name) || name.strip_suffix(".weight").is_some_and(|n| glob_match(&self.pattern, n))
    }
}

/// A solver by name, with default settings.
pub fn parse_solver(s: &str) -> Result<Method> {
    crate::solve::solver(s)
}

/// Reads a TOML recipe file's rules.
pub fn read_recipe(path: &Path) -> Result<Vec<Rule>> {
    Ok(read_recipe_file(path)?.0)
}

/// Reads a TOML recipe file: its rules and its run settings.
pub fn read_recipe_file(path: &Path) -> Result<(Vec<Rule>, RecipeSettings)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: RecipeFile = toml::from_str(&text).map_err(|e| {
        // One line: where, and what (toml's own Display draws the source over several lines).
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                format!(
                    "line {}, column {}: ",
                    before.matches('\n').count() + 1,
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1
                )
            })
            .unwrap_or_default();
        Error::corrupt(path, format!("not a recipe: {at}{}", e.message().trim()))
    })?;
    for (i, r) in file.rule.iter().enumerate() {
        r.check(&format!("{}: rule {}", path.display(), i + 1))?;
    }
    let settings = RecipeSettings { rotate: file.rotate, transforms: file.transform, act: file.act, kv: file.kv };
    Ok((file.rule, settings))
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("blk.*.ffn_down", "blk.12.ffn_down"));
        assert!(glob_match("*", ""));
        assert!(glob_match("blk.?.attn_*", "blk.3.attn_q"));
        assert!(!glob_match("blk.?.attn_*", "blk.13.attn_q"));
        assert!(!glob_match("blk.*.ffn_down", "blk.1.ffn_up"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn schemes() {
        let r = Rule::parse_scheme("blk.*.ffn_down=q6_k@rtn").unwrap();
        assert_eq!(r.format, "q6_k");
        assert_eq!(r.solver.as_deref(), Some("rtn"));
        assert!(r.matches("blk.4.ffn_down.weight"));
        assert!(Rule::parse_scheme("blk.*").is_err());
        assert!(Rule::parse_scheme("x=notaformat").is_err());
        assert!(Rule::parse_scheme("x=q4_0@magic").is_err());
    }

    #[test]
    fn recipe_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[[rule]]\npattern = \"blk.*.attn_v\"\nformat = \"q8_0\"\n\n[[rule]]\npattern = \"*\"\nformat = \"q4_0\"\nsolver = \"gptq\"\n").unwrap();
        let rules = read_recipe(&p).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].solver.as_deref(), Some("gptq"));
        std::fs::write(&p, "[[rule]]\npatern = \"x\"\nformat = \"q8_0\"\n").unwrap();
        let e = read_recipe(&p).unwrap_err().to_string();
        assert!(e.contains("r.toml"), "{e}");
    }
}

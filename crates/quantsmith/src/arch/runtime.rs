//! What runs *between* the weights at inference: fake-quantized activations at the inputs of
//! the linear layers, a fake-quantized KV cache, and online Hadamard rotations of a linear's
//! input. A quantization run that asks for them (`--act`, `--kv`, `--rotate …:online`)
//! records them in the output's config.json under [`RUNTIME_KEY`], and every model loaded
//! from such a directory (eval, inspect, the pipeline itself) installs the same hooks, so
//! what was measured is what the file means.
//!
//! Activations are quantized per token (one scale per row of a layer's input) unless the
//! format names its own groups (`mxfp4`: blocks of 32), or, with `FORMAT:static`, with one
//! scale per layer input fixed from calibration (the largest |x| the calibration tokens gave
//! it, recorded per linear in `act_scales`); the KV cache per token and head (keys after
//! RoPE), or in groups within a head.

use std::sync::Arc;

use formats::format::{Format, Granularity};
use formats::scale::ScaleStorage;

use super::layers::{InputHook, KvHook};
use crate::transform::hadamard::Orthogonal;
use crate::{Error, Result};

/// The key of config.json that records a [`Runtime`].
pub const RUNTIME_KEY: &str = "quantsmith_runtime";

/// Online operations a model needs at inference.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Runtime {
    /// Format of every linear layer's input (not the output head), per token.
    pub act: Option<String>,
    /// Format of the keys (after RoPE) and values, per token and head.
    pub kv: Option<String>,
    /// Linears (block-local names, `ffn_down`) whose input is multiplied by the plain
    /// Hadamard matrix of its width before the layer (their weights carry the same rotation);
    /// [`QK_HEADS`] rotates every query and key head after RoPE (q·kᵀ is unchanged, the cached
    /// keys lose their outlier channels).
    pub online_hadamard: Vec<String>,
    /// Static activation ranges (`--act FORMAT:static`): the calibrated max |x| of each
    /// linear's input, by `blk.N.linear`.
    pub act_scales: std::collections::BTreeMap<String, f32>,
}

/// The `:static` suffix of an activation spec, split off: (format spec, static).
pub fn split_static(spec: &str) -> (&str, bool) {
    match spec.strip_suffix(":static") {
        Some(s) => (s, true),
        None => (spec, false),
    }
}

/// The entry of [`Runtime::online_hadamard`] that rotates query and key heads after RoPE.
pub const QK_HEADS: &str = "qk_heads";

/// A format as activation or KV-cache quantization uses it: ggml block types are weight
/// storage, not dynamic activation formats; an unscaled element (`fp8_e4m3`) gets a per-row
/// f32 scale.
pub fn dynamic_format(spec: &str, what: &str) -> Result<Format> {
    let (spec, is_static) = split_static(spec);
    if is_static {
        let mut f = dynamic_format(spec, what)?;
        if f.granularity != Granularity::Channel || f.asym {
            return Err(Error::Other(format!(
                "{what} `{spec}:static`: a static scale is one per layer input; name a bare symmetric element (int8, fp8_e4m3, …)"
            )));
        }
        f.granularity = Granularity::Tensor;
        return Ok(f);
    }
    let mut f = Format::parse(spec).map_err(|e| Error::Other(format!("{what} `{spec}`: {e}")))?;
    if f.ggml.is_some() {
        return Err(Error::Other(format!(
            "{what} `{spec}`: a ggml block type is a weight storage layout, not an activation format; use a format such as int8, int4, fp8_e4m3, fp4_e2m1, mxfp4 or nvfp4"
        )));
    }
    if f.elements.len() > 1 {
        return Err(Error::Other(format!(
            "{what} `{spec}`: formats that choose among several grids are not run on activations"
        )));
    }
    if let formats::format::Rounding::Stochastic { .. } = f.rounding {
        return Err(Error::Other(format!("{what} `{spec}`: stochastic rounding is not used for activations")));
    }
    if f.granularity == Granularity::None {
        f.granularity = Granularity::Channel;
        f.scale = ScaleStorage::F32;
        f.explicit_scaling = true;
    }
    if f.granularity == Granularity::Tensor {
        return Err(Error::Other(format!(
            "{what} `{spec}`: a per-tensor scale would be computed per batch; use per-token scales (the default), groups, or `{spec}:static` for a scale calibrated once"
        )));
    }
    Ok(f)
}

/// Quantizes then dequantizes `x` `[rows, width]` in place with `f`; left as it is when the
/// values cannot be quantized (non-finite), so the evaluation that follows reports them.
fn fake_quant_in_place(f: &Format, x: &mut [f32], width: usize) {
    if x.is_empty() {
        return;
    }
    if let Ok(q) = f.fake_quantize(x, x.len() / width, width, None) {
        x.copy_from_slice(&q);
    }
}

impl Runtime {
    /// Whether nothing runs online.
    pub fn is_empty(&self) -> bool {
        self.act.is_none() && self.kv.is_none() && self.online_hadamard.is_empty()
    }

    /// Whether activations take static scales, calibrated once per linear input.
    pub fn static_act(&self) -> bool {
        self.act.as_deref().is_some_and(|a| split_static(a).1)
    }

    /// Checks the formats (and that every rotated linear is one the family has).
    pub fn validate(&self, linears: &[&str]) -> Result<()> {
        if let Some(a) = &self.act {
            dynamic_format(a, "--act")?;
        }
        if let Some(k) = &self.kv {
            dynamic_format(k, "--kv")?;
        }
        for l in &self.online_hadamard {
            if l != QK_HEADS && !linears.contains(&l.as_str()) {
                return Err(Error::Other(format!(
                    "online Hadamard on `{l}`: not a linear of this family ({})",
                    linears.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// As recorded in config.json.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "act": self.act,
            "kv": self.kv,
            "online_hadamard": self.online_hadamard,
        });
        if !self.act_scales.is_empty() {
            v["act_scales"] = serde_json::json!(self.act_scales);
        }
        v
    }

    /// Reads a recorded runtime; `path` names config.json in errors.
    pub fn from_json(v: &serde_json::Value, path: &std::path::Path) -> Result<Runtime> {
        let err = |key: &str, msg: String| Error::Config {
            path: path.to_path_buf(),
            key: format!("{RUNTIME_KEY}.{key}"),
            msg,
        };
        let obj = v.as_object().ok_or_else(|| err("", format!("expected an object, found {v}")))?;
        let text = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None => Ok(None),
                Some(v) if v.is_null() => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(err(key, format!("expected a format spec string, found {v}"))),
            }
        };
        let online = match obj.get("online_hadamard") {
            None => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err("online_hadamard", format!("expected names, found {x}")))
                })
                .collect::<Result<_>>()?,
            Some(v) => return Err(err("online_hadamard", format!("expected an array of linear names, found {v}"))),
        };
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "act" | "kv" | "online_hadamard" | "act_scales")) {
            return Err(err(k, "unknown setting (known: act, kv, online_hadamard, act_scales)".into()));
        }
        let mut act_scales = std::collections::BTreeMap::new();
        if let Some(v) = obj.get("act_scales") {
            let o = v.as_object().ok_or_else(|| err("act_scales", format!("expected an object, found {v}")))?;
            for (k, v) in o {
                let m = v
                    .as_f64()
                    .filter(|m| m.is_finite() && *m >= 0.0)
                    .ok_or_else(|| err("act_scales", format!("`{k}`: expected a finite range ≥ 0, found {v}")))?;
                act_scales.insert(k.clone(), m as f32);
            }
        }
        let r = Runtime { act: text("act")?, kv: text("kv")?, online_hadamard: online, act_scales };
        if r.static_act() && r.act_scales.is_empty() {
            return Err(err("act_scales", "static activation quantization without calibrated ranges".into()));
        }
        for (key, spec) in [("act", &r.act), ("kv", &r.kv)] {
            if let Some(s) = spec {
                dynamic_format(s, key).map_err(|e| err(key, e.to_string()))?;
            }
        }
        Ok(r)
    }

    /// The input hook of linear `name` of block `block` (width `inp`): the online Hadamard,
    /// then activation quantization, as the runtime says; `None` when neither applies. With
    /// static scales and no range recorded yet for this input (calibration still to come),
    /// only the rotation.
    pub fn input_hook(&self, block: usize, name: &str, inp: usize) -> Result<Option<InputHook>> {
        let rot = if self.online_hadamard.iter().any(|l| l == name) {
            Some(Orthogonal::hadamard(inp).map_err(|e| Error::Other(format!("online rotation of `{name}`: {e}")))?)
        } else {
            None
        };
        let act = match &self.act {
            Some(spec) => {
                let f = dynamic_format(spec, "--act")?;
                f.group_len(inp)
                    .map_err(|e| Error::Other(format!("--act `{spec}` on `{name}` ({inp} inputs): {e}")))?;
                if self.static_act() {
                    self.act_scales.get(&format!("blk.{block}.{name}")).map(|&m| {
                        let p = f.group_params(&[-m, m], None, 1.0);
                        (f, Some(p))
                    })
                } else {
                    Some((f, None))
                }
            }
            None => None,
        };
        if rot.is_none() && act.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(move |x: &mut [f32]| {
            if let Some(r) = &rot {
                r.apply_rows(x);
            }
            match &act {
                Some((f, Some(p))) => x.iter_mut().for_each(|v| *v = f.quantize_value(*v, p)),
                Some((f, None)) => fake_quant_in_place(f, x, inp),
                None => {}
            }
        })))
    }

    /// The rotation of query and key heads after RoPE, if the runtime has one.
    pub fn qk_rotation(&self, head_dim: usize) -> Result<Option<Arc<Orthogonal>>> {
        if !self.online_hadamard.iter().any(|l| l == QK_HEADS) {
            return Ok(None);
        }
        Orthogonal::hadamard(head_dim)
            .map(|o| Some(Arc::new(o)))
            .map_err(|e| Error::Other(format!("online rotation of query/key heads ({head_dim} wide): {e}")))
    }

    /// The KV hook for heads of width `head_dim`, if the runtime quantizes the cache.
    pub fn kv_hook(&self, head_dim: usize) -> Result<Option<KvHook>> {
        let Some(spec) = &self.kv else { return Ok(None) };
        let f = dynamic_format(spec, "--kv")?;
        f.group_len(head_dim).map_err(|e| Error::Other(format!("--kv `{spec}` on heads of {head_dim}: {e}")))?;
        Ok(Some(Arc::new(move |k: &mut [f32], v: &mut [f32]| {
            fake_quant_in_place(&f, k, head_dim);
            fake_quant_in_place(&f, v, head_dim);
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_for_activations() {
        assert!(dynamic_format("q4_0", "--act").unwrap_err().to_string().contains("ggml block type"));
        let f = dynamic_format("fp8_e4m3", "--act").unwrap();
        assert_eq!(f.granularity, Granularity::Channel);
        assert!(dynamic_format("int8:t", "--act").is_err());
        assert!(matches!(dynamic_format("mxfp4", "--act").unwrap().granularity, Granularity::Group(32)));
    }

    #[test]
    fn json_round_trip_and_bad_keys() {
        let r = Runtime {
            act: Some("int4".into()),
            kv: Some("int8".into()),
            online_hadamard: vec!["ffn_down".into()],
            ..Default::default()
        };
        let p = std::path::Path::new("config.json");
        assert_eq!(Runtime::from_json(&r.to_json(), p).unwrap(), r);
        let bad = serde_json::json!({"act": "q4_k"});
        assert!(Runtime::from_json(&bad, p).unwrap_err().to_string().contains("quantsmith_runtime.act"));
        let bad = serde_json::json!({"actt": "int4"});
        assert!(Runtime::from_json(&bad, p).unwrap_err().to_string().contains("unknown setting"));
    }

    #[test]
    fn act_hook_quantizes_per_token() {
        let r = Runtime { act: Some("int4".into()), ..Default::default() };
        let hook = r.input_hook(0, "attn_q", 4).unwrap().unwrap();
        let mut x = vec![0.1, 0.2, 0.3, 7.0, 100.0, 1.0, 2.0, 3.0];
        hook(&mut x);
        // Row 0's scale is 7/7 = 1: 0.1..0.3 round to 0; row 1's is 100/7.
        assert_eq!(&x[..4], &[0.0, 0.0, 0.0, 7.0]);
        assert!((x[4] - 100.0).abs() < 1e-4, "{}", x[4]);
        // Static: one calibrated range; values past it saturate.
        let mut r = Runtime { act: Some("int8:static".into()), ..Default::default() };
        assert!(r.input_hook(0, "attn_q", 4).unwrap().is_none(), "no range yet: nothing to do");
        r.act_scales.insert("blk.0.attn_q".into(), 12.7);
        let hook = r.input_hook(0, "attn_q", 4).unwrap().unwrap();
        let mut x = vec![0.05, 0.16, 100.0, -100.0];
        hook(&mut x);
        assert!((x[0] - 0.0).abs() < 1e-6 && (x[1] - 0.2).abs() < 1e-5, "{x:?}");
        // int8 is -128..127: the negative side saturates one step further.
        assert!((x[2] - 12.7).abs() < 1e-4 && (x[3] + 12.8).abs() < 1e-4, "{x:?}");
        assert!(dynamic_format("int8:g32:static", "--act").is_err());
    }
}

//! `rotate`: QuaRot's rotation of the residual stream by one orthogonal `Q`.
//!
//! Every RMSNorm's gain folds into the linears it feeds (and then becomes 1); the token
//! embedding and the inputs of q/k/v, gate/up and the head are multiplied by `Q`, the outputs
//! of attn_output and ffn_down by `Qᵀ`. RMSNorm commutes with an orthogonal map of its input,
//! so the model computes the same function, while the weights' and activations' outliers are
//! spread over all channels. A tied head is untied (the final norm's gain folds into the head
//! but not into the embedding). The value and output projections also take a Hadamard
//! rotation per head (exact, offline). All of this leaves a plain Llama model: GGUF and every
//! runtime load it unchanged.
//!
//! With `online`, ffn_down's input is also rotated by the plain Hadamard matrix of its width
//! at inference (its weight carries the same rotation): the activation outliers of the MLP go
//! too, which activation quantization needs; and every query and key head is rotated by the
//! head-width Hadamard after RoPE (scores unchanged), so the cached keys quantize better. That is recorded in the model's runtime
//! ([`crate::arch::runtime`]) and GGUF cannot carry it.
//!
//! Spec: `rotate:hadamard|random[:seed=N][:online]`. `hadamard` is QuaRot's randomized
//! Hadamard (seeded signs; [`super::hadamard`] builds the orders), `random` a seeded
//! Haar-random orthogonal matrix.

use super::hadamard::Orthogonal;
use super::Transform;
use crate::arch::{Arch, Block, Globals};
use crate::tensor::TensorInfo;
use crate::{Error, Result};

/// Which orthogonal matrix rotates the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Randomized Hadamard.
    Hadamard,
    /// Haar-random orthogonal.
    Random,
}

/// The rotation transform.
pub struct Rotate {
    /// The residual rotation's kind.
    pub kind: Kind,
    /// Seed of the signs / the random matrix.
    pub seed: u64,
    /// Rotate ffn_down's input online as well.
    pub online: bool,
    q: std::sync::OnceLock<std::result::Result<Orthogonal, String>>,
}

impl std::fmt::Debug for Rotate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotate")
            .field("kind", &self.kind)
            .field("seed", &self.seed)
            .field("online", &self.online)
            .finish()
    }
}

impl Rotate {
    /// Parses `hadamard|random[:seed=N][:online]` (parts also separated by commas).
    pub fn parse(args: &str) -> Result<Rotate> {
        let mut parts = args.split([':', ',']).filter(|p| !p.is_empty());
        let kind = match parts.next() {
            Some("hadamard") => Kind::Hadamard,
            Some("random") => Kind::Random,
            other => {
                return Err(Error::Other(format!(
                    "rotate: `{}` is not a rotation (hadamard, random; `--rotate none` for none)",
                    other.unwrap_or("")
                )))
            }
        };
        let mut r = Rotate { kind, seed: 0, online: false, q: Default::default() };
        for p in parts {
            match p.split_once('=') {
                Some(("seed", v)) => {
                    r.seed = v.parse().map_err(|_| Error::Other(format!("rotate: seed `{v}` is not an integer")))?
                }
                None if p == "online" => r.online = true,
                _ => return Err(Error::Other(format!("rotate: cannot read `{p}` (seed=N, online)"))),
            }
        }
        Ok(r)
    }

    /// The residual rotation for width `n` (built once).
    fn residual(&self, n: usize) -> Result<&Orthogonal> {
        self.q
            .get_or_init(|| {
                match self.kind {
                    Kind::Hadamard => Orthogonal::random_hadamard(n, self.seed),
                    Kind::Random => Ok(Orthogonal::random(n, self.seed)),
                }
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Other(format!("--rotate: residual width {n}: {e}")))
    }

    /// The per-head rotation of width `hd`.
    fn head(&self, hd: usize) -> Orthogonal {
        Orthogonal::hadamard(hd).unwrap_or_else(|_| Orthogonal::random(hd, self.seed ^ 0x4ead))
    }

    /// What it is, for reports.
    pub fn describe(&self, d_model: usize) -> String {
        match self.residual(d_model) {
            Ok(q) => {
                format!(
                    "{}{}",
                    q.describe(),
                    if self.online { "; online Hadamard on ffn_down's input and on query/key heads" } else { "" }
                )
            }
            Err(e) => e.to_string(),
        }
    }
}

fn no_map(arch: &dyn Arch) -> Error {
    Error::Other(format!(
        "--rotate: the {} architecture has no rotation map (a rotation of the residual stream commutes only with pre-RMSNorm decoders: llama, mistral, qwen2)",
        arch.family()
    ))
}

impl Transform for Rotate {
    fn name(&self) -> &'static str {
        "rotate"
    }

    fn check(&self, arch: &dyn Arch) -> Result<()> {
        let g = arch.rotation_globals().ok_or_else(|| no_map(arch))?;
        self.residual(g.d_model)?;
        if self.online {
            Orthogonal::hadamard(g.head_dim)
                .map_err(|e| Error::Other(format!("--rotate …:online: query/key heads ({} wide): {e}", g.head_dim)))?;
            for (name, width) in &g.online {
                Orthogonal::hadamard(*width)
                    .map_err(|e| Error::Other(format!("--rotate …:online: the input of {name} ({width} wide): {e}")))?;
            }
        }
        Ok(())
    }

    fn added_tensors(&self, arch: &dyn Arch, tensors: &[TensorInfo]) -> Vec<TensorInfo> {
        let Some(g) = arch.rotation_globals() else { return Vec::new() };
        if tensors.iter().any(|t| t.name == g.head) {
            return Vec::new();
        }
        match tensors.iter().find(|t| t.name == g.embed) {
            Some(e) => vec![TensorInfo { name: g.head.clone(), ..e.clone() }],
            None => Vec::new(),
        }
    }

    fn online_hadamard(&self) -> Vec<String> {
        if self.online {
            vec!["ffn_down".into(), crate::arch::runtime::QK_HEADS.into()]
        } else {
            Vec::new()
        }
    }

    fn on_globals(&self, arch: &dyn Arch, globals: &mut Globals) -> Result<()> {
        let g = arch.rotation_globals().ok_or_else(|| no_map(arch))?;
        let q = self.residual(g.d_model)?;
        let d = g.d_model;
        let missing = |n: &str| Error::Other(format!("--rotate: the model has no `{n}`"));
        let (eshape, mut embed) = globals.tensors.remove(&g.embed).ok_or_else(|| missing(&g.embed))?;
        let (hshape, mut head) = match globals.tensors.remove(&g.head) {
            Some(h) => h,
            None => (eshape.clone(), embed.clone()),
        };
        let norm = globals.tensors.get_mut(&g.out_norm).ok_or_else(|| missing(&g.out_norm))?;
        for row in head.chunks_mut(d) {
            row.iter_mut().zip(&norm.1).for_each(|(w, s)| *w *= s);
        }
        norm.1.iter_mut().for_each(|v| *v = 1.0);
        q.apply_rows(&mut embed);
        q.apply_rows(&mut head);
        globals.tensors.insert(g.embed, (eshape, embed));
        globals.tensors.insert(g.head, (hshape, head));
        Ok(())
    }

    fn on_block(&self, arch: &dyn Arch, index: usize, block: &mut dyn Block) -> Result<()> {
        let g = arch.rotation_globals().ok_or_else(|| no_map(arch))?;
        let map = block.rotation_map().ok_or_else(|| no_map(arch))?;
        let q = self.residual(g.d_model)?;
        let bad = |m: String| Error::Other(format!("--rotate: block {index}: {m}"));
        // Readers: fold each norm's gain into its group's columns, then rotate the columns.
        for grp in block.groups() {
            let Some(norm) = grp.norm else { continue };
            let gain = block.norm_mut(norm).ok_or_else(|| bad(format!("no norm `{norm}`")))?;
            let gain_values = std::mem::replace(gain, vec![1.0; gain.len()]);
            for name in grp.linears {
                let l = block.linear_mut(name).ok_or_else(|| bad(format!("no linear `{name}`")))?;
                for row in l.w.chunks_mut(l.inp) {
                    row.iter_mut().zip(&gain_values).for_each(|(w, s)| *w *= s);
                }
                q.apply_rows(&mut l.w);
            }
        }
        // Writers: rotate the output rows (and the bias).
        for name in map.writers {
            let l = block.linear_mut(name).ok_or_else(|| bad(format!("no linear `{name}`")))?;
            q.apply_left_transposed(&mut l.w, l.inp);
            if let Some(b) = &mut l.b {
                q.apply_rows(b);
            }
        }
        // Value heads and the output's columns per head, by one Hadamard of the head width.
        if let Some((v, o)) = map.value_output {
            let hr = self.head(map.head_dim);
            let hd = map.head_dim;
            let vl = block.linear_mut(v).ok_or_else(|| bad(format!("no linear `{v}`")))?;
            let inp = vl.inp;
            for head in vl.w.chunks_mut(hd * inp) {
                hr.apply_left_transposed(head, inp);
            }
            if let Some(b) = &mut vl.b {
                hr.apply_rows(b);
            }
            let ol = block.linear_mut(o).ok_or_else(|| bad(format!("no linear `{o}`")))?;
            hr.apply_rows(&mut ol.w);
        }
        if self.online {
            for (name, width) in &g.online {
                let l = block.linear_mut(name).ok_or_else(|| bad(format!("no linear `{name}`")))?;
                if l.inp != *width {
                    return Err(bad(format!("`{name}` reads {} channels, expected {width}", l.inp)));
                }
                Orthogonal::hadamard(*width)?.apply_rows(&mut l.w);
            }
        }
        Ok(())
    }
}

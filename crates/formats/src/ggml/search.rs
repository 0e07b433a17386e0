//! The scale searches shared by ggml's encoders (ggml-quants.c's `make_*_quants` family),
//! transcribed operation by operation in f32 so that the chosen codes and scales, and hence
//! the encoded bytes, are identical to llama.cpp's.

// Index loops mirror ggml-quants.c line by line, which keeps them auditable against it.
#![allow(clippy::needless_range_loop)]

/// Below this group maximum a group counts as all zero (ggml's GROUP_MAX_EPS).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, with ggml's magic-number trick (valid for
/// |x| <= 2^22); kept as the bit trick so that behaviour at ties and edges is identical.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Symmetric search (ggml `make_qx_quants`): codes `L[i] + nmax` in `0..2*nmax`, weights `qw`
/// or, without them, the ones `rmse_type` picks. Returns the scale.
pub(crate) fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let iscale = -nmaxf / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for (o, &v) in l_out.iter_mut().zip(x) {
            *o = (nmax + clamp(nearest_int(iscale * v))) as i8;
        }
        return 1.0 / iscale;
    }
    let mut rmse_type = rmse_type;
    let mut return_early = false;
    if rmse_type < 0 {
        rmse_type = -rmse_type;
        return_early = true;
    }
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 { 0.5 * (scale + 1.0 / iscale) } else { 1.0 / iscale };
    }
    let mut best = scale * sumlx;
    if n > MAX_LANE_N {
        return qx_search_scalar(x, nmax, max, l_out, &weight, scale, best);
    }
    // The 18 candidate scales are evaluated side by side (one lane each, every lane doing the
    // scalar loop's operations in its order), then chosen in the scalar loop's order.
    let mut w = [0f32; MAX_LANE_N];
    for (i, wi) in w[..n].iter_mut().enumerate() {
        *wi = weight(i);
    }
    let mut isc = [0f32; 24];
    for (k, is) in (-9..=9).filter(|&is| is != 0).enumerate() {
        isc[k] = -(nmaxf + 0.1 * is as f32) / max;
    }
    let last = isc[17];
    isc[18..].fill(last);
    let mut slx = [0f32; 24];
    let mut sl2 = [0f32; 24];
    for c in 0..3 {
        let r = 8 * c..8 * c + 8;
        lanes::qx_sums(
            x,
            &w[..n],
            nmax,
            (&isc[r.clone()]).try_into().unwrap(),
            (&mut slx[r.clone()]).try_into().unwrap(),
            (&mut sl2[r]).try_into().unwrap(),
        );
    }
    let mut winner = None;
    for k in 0..18 {
        if sl2[k] > 0.0 && slx[k] * slx[k] > best * sl2[k] {
            scale = slx[k] / sl2[k];
            best = scale * slx[k];
            winner = Some(k);
        }
    }
    if let Some(k) = winner {
        for i in 0..n {
            l_out[i] = (nmax + clamp(nearest_int(isc[k] * x[i]))) as i8;
        }
    }
    scale
}

/// Longest group the lane-parallel searches take (ggml's groups are 16 or 32 long).
const MAX_LANE_N: usize = 64;

/// `make_qx_quants`'s candidate loop one candidate at a time (groups longer than MAX_LANE_N).
fn qx_search_scalar(
    x: &[f32],
    nmax: i32,
    max: f32,
    l_out: &mut [i8],
    weight: &dyn Fn(usize) -> f32,
    mut scale: f32,
    mut best: f32,
) -> f32 {
    let n = x.len();
    let nmaxf = nmax as f32;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = clamp(nearest_int(iscale * x[i])) as f32;
            let w = weight(i);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l_out[i] = (nmax + clamp(nearest_int(iscale * x[i]))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's symmetric search with coordinate-descent refinement (ggml `make_q3_quants`).
pub(crate) fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if do_rmse {
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = clamp(nearest_int(iscale * x[i]));
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l_out[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = clamp(nearest_int(x[i] * sl2 / slx));
                    if new_l != l_out[i] as i32 {
                        let nl = new_l as f32;
                        slx += w * x[i] * nl;
                        sl2 += w * nl * nl;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for o in l_out[..n].iter_mut() {
            *o += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        l_out[i] = (clamp(nearest_int(iscale * x[i])) + nmax) as i8;
    }
    1.0 / iscale
}

/// Asymmetric (scale, min) search (ggml `make_qkx2_quants` / `make_qkx3_quants` with weights,
/// which differ only in testing `max == min` vs `max <= min`). Codes in `0..=nmax`; returns
/// (scale, -min).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx_quants(
    x: &[f32],
    nmax: i32,
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    qkx3: bool,
) -> (f32, f32) {
    let n = x.len();
    let w_at = |i: usize| weights[i];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w_at(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = w_at(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let degenerate = if qkx3 { max <= min } else { max == min };
    if degenerate {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let mut diff = scale * l as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += w_at(i) * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let ncand = nstep as usize + 1;
    if n > MAX_LANE_N {
        return qkx_search_scalar(
            x,
            nmax,
            weights,
            l_out,
            (rmin, rdelta, nstep),
            use_mad,
            (sum_w, sum_x),
            (min, max),
            (scale, best_error),
        );
    }
    // Candidates are evaluated eight at a time, one per lane, each lane doing the scalar loop's
    // operations in its order. A winning candidate moves `min`, which every later candidate's
    // scale and offsets depend on: the candidates after it are then evaluated again with the
    // new `min`, so the result is exactly the candidate-by-candidate search's.
    let mut xm = [0f32; MAX_LANE_N];
    let mut winner: Option<(f32, f32)> = None; // (iscale, the min it was evaluated with)
    let mut k0 = 0usize;
    'rounds: while k0 < ncand {
        let cur_min = min;
        for i in 0..n {
            xm[i] = x[i] - cur_min;
        }
        for c0 in (k0..ncand).step_by(8) {
            let mut isc = [0f32; 8];
            for (j, v) in isc.iter_mut().enumerate() {
                let is = (c0 + j).min(ncand - 1);
                *v = (rmin + rdelta * is as f32 + nmaxf) / (max - cur_min);
            }
            let (mut sl, mut sl2, mut sxl) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            lanes::qkx_sums(x, &xm[..n], weights, nmax, &isc, &mut sl, &mut sl2, &mut sxl);
            let mut ok = [false; 8];
            let (mut ts, mut tm) = ([0f32; 8], [0f32; 8]);
            for j in 0..8 {
                let d = sum_w * sl2[j] - sl[j] * sl[j];
                if d > 0.0 {
                    ok[j] = true;
                    ts[j] = (sum_w * sxl[j] - sum_x * sl[j]) / d;
                    tm[j] = (sl2[j] * sum_x - sl[j] * sxl[j]) / d;
                    if tm[j] > 0.0 {
                        tm[j] = 0.0;
                        ts[j] = sxl[j] / sl2[j];
                    }
                }
            }
            let mut err = [0f32; 8];
            lanes::qkx_errors(x, &xm[..n], weights, nmax, use_mad, &isc, &ts, &tm, &mut err);
            for j in 0..8.min(ncand - c0) {
                if ok[j] && err[j] < best_error {
                    best_error = err[j];
                    scale = ts[j];
                    min = tm[j];
                    winner = Some((isc[j], cur_min));
                    if min.to_bits() != cur_min.to_bits() {
                        k0 = c0 + j + 1;
                        continue 'rounds;
                    }
                }
            }
        }
        break;
    }
    if let Some((iscale, m)) = winner {
        for i in 0..n {
            l_out[i] = nearest_int(iscale * (x[i] - m)).clamp(0, nmax) as u8;
        }
    }
    (scale, -min)
}

/// `make_qkx_quants`'s candidate loop one candidate at a time (groups longer than MAX_LANE_N).
#[allow(clippy::too_many_arguments)]
fn qkx_search_scalar(
    x: &[f32],
    nmax: i32,
    w: &[f32],
    l_out: &mut [u8],
    (rmin, rdelta, nstep): (f32, f32, i32),
    use_mad: bool,
    (sum_w, sum_x): (f32, f32),
    (mut min, max): (f32, f32),
    (mut scale, mut best_error): (f32, f32),
) -> (f32, f32) {
    let n = x.len();
    let nmaxf = nmax as f32;
    let mut laux = vec![0u8; n];
    for is in 0..=nstep {
        let iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let wl = w[i] * l as f32;
            sum_l += wl;
            sum_l2 += wl * l as f32;
            sum_xl += wl * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += w[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The per-candidate loops of the scale searches, eight candidates (lanes) at a time. Each
/// lane performs exactly the f32 operations of the scalar loop, in the same order (no fused
/// multiply-adds), so the sums are bit-identical to one-candidate-at-a-time evaluation; the
/// AVX2 versions are the same code compiled for 8-wide registers.
mod lanes {
    macro_rules! dispatch {
        ($name:ident, ($($a:ident: $t:ty),*)) => {
            #[inline]
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $name($($a: $t),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    if std::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has AVX2 (checked just above).
                        unsafe { avx2::$name($($a),*) };
                        return;
                    }
                }
                body::$name($($a),*)
            }
        };
    }

    dispatch!(qx_sums, (x: &[f32], w: &[f32], nmax: i32, isc: &[f32; 8], slx: &mut [f32; 8], sl2: &mut [f32; 8]));
    dispatch!(qkx_sums, (x: &[f32], xm: &[f32], w: &[f32], nmax: i32, isc: &[f32; 8], sl: &mut [f32; 8], sl2: &mut [f32; 8], sxl: &mut [f32; 8]));
    dispatch!(qkx_errors, (x: &[f32], xm: &[f32], w: &[f32], nmax: i32, use_mad: bool, isc: &[f32; 8], ts: &[f32; 8], tm: &[f32; 8], err: &mut [f32; 8]));

    /// The same loops written with AVX2 intrinsics: one 8-lane register per quantity, the
    /// rounding as `nearest_int`'s bit trick on integer lanes, plain multiplies and adds.
    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use std::arch::x86_64::*;

        /// `nearest_int(s * v)` clamped to `lo..=hi`, as f32 lanes.
        #[inline]
        #[target_feature(enable = "avx2")]
        fn round_clamp(sv: __m256, lo: __m256i, hi: __m256i) -> __m256 {
            let magic = _mm256_set1_ps(12_582_912.0);
            let bits = _mm256_castps_si256(_mm256_add_ps(sv, magic));
            let i = _mm256_sub_epi32(
                _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff)),
                _mm256_set1_epi32(0x0040_0000),
            );
            _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(i, lo), hi))
        }

        #[target_feature(enable = "avx2")]
        pub(super) fn qx_sums(x: &[f32], w: &[f32], nmax: i32, isc: &[f32; 8], slx: &mut [f32; 8], sl2: &mut [f32; 8]) {
            // SAFETY: unaligned loads and stores of exactly eight f32 from [f32; 8].
            unsafe {
                let s = _mm256_loadu_ps(isc.as_ptr());
                let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
                let (mut a, mut b) = (_mm256_loadu_ps(slx.as_ptr()), _mm256_loadu_ps(sl2.as_ptr()));
                for (&xi, &wi) in x.iter().zip(w) {
                    let l = round_clamp(_mm256_mul_ps(s, _mm256_set1_ps(xi)), lo, hi);
                    a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(wi * xi), l));
                    b = _mm256_add_ps(b, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(wi), l), l));
                }
                _mm256_storeu_ps(slx.as_mut_ptr(), a);
                _mm256_storeu_ps(sl2.as_mut_ptr(), b);
            }
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2")]
        pub(super) fn qkx_sums(
            x: &[f32],
            xm: &[f32],
            w: &[f32],
            nmax: i32,
            isc: &[f32; 8],
            sl: &mut [f32; 8],
            sl2: &mut [f32; 8],
            sxl: &mut [f32; 8],
        ) {
            // SAFETY: unaligned loads and stores of exactly eight f32 from [f32; 8].
            unsafe {
                let s = _mm256_loadu_ps(isc.as_ptr());
                let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(nmax));
                let mut a = _mm256_loadu_ps(sl.as_ptr());
                let mut b = _mm256_loadu_ps(sl2.as_ptr());
                let mut c = _mm256_loadu_ps(sxl.as_ptr());
                for ((&xi, &xmi), &wi) in x.iter().zip(xm).zip(w) {
                    let l = round_clamp(_mm256_mul_ps(s, _mm256_set1_ps(xmi)), lo, hi);
                    let wl = _mm256_mul_ps(_mm256_set1_ps(wi), l);
                    a = _mm256_add_ps(a, wl);
                    b = _mm256_add_ps(b, _mm256_mul_ps(wl, l));
                    c = _mm256_add_ps(c, _mm256_mul_ps(wl, _mm256_set1_ps(xi)));
                }
                _mm256_storeu_ps(sl.as_mut_ptr(), a);
                _mm256_storeu_ps(sl2.as_mut_ptr(), b);
                _mm256_storeu_ps(sxl.as_mut_ptr(), c);
            }
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2")]
        pub(super) fn qkx_errors(
            x: &[f32],
            xm: &[f32],
            w: &[f32],
            nmax: i32,
            use_mad: bool,
            isc: &[f32; 8],
            ts: &[f32; 8],
            tm: &[f32; 8],
            err: &mut [f32; 8],
        ) {
            // SAFETY: unaligned loads and stores of exactly eight f32 from [f32; 8].
            unsafe {
                let s = _mm256_loadu_ps(isc.as_ptr());
                let (sc, mn) = (_mm256_loadu_ps(ts.as_ptr()), _mm256_loadu_ps(tm.as_ptr()));
                let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(nmax));
                let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
                let mut e = _mm256_loadu_ps(err.as_ptr());
                for ((&xi, &xmi), &wi) in x.iter().zip(xm).zip(w) {
                    let l = round_clamp(_mm256_mul_ps(s, _mm256_set1_ps(xmi)), lo, hi);
                    let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(sc, l), mn), _mm256_set1_ps(xi));
                    let d = if use_mad { _mm256_and_ps(diff, abs_mask) } else { _mm256_mul_ps(diff, diff) };
                    e = _mm256_add_ps(e, _mm256_mul_ps(_mm256_set1_ps(wi), d));
                }
                _mm256_storeu_ps(err.as_mut_ptr(), e);
            }
        }
    }

    mod body {
        use super::super::nearest_int;

        /// Σ w·x·l and Σ w·l·l per lane, l = clamp(round(isc·x), -nmax, nmax-1).
        #[inline(always)]
        pub(super) fn qx_sums(x: &[f32], w: &[f32], nmax: i32, isc: &[f32; 8], slx: &mut [f32; 8], sl2: &mut [f32; 8]) {
            let (mut a, mut b) = (*slx, *sl2);
            for (&xi, &wi) in x.iter().zip(w) {
                let wx = wi * xi;
                for c in 0..8 {
                    let l = nearest_int(isc[c] * xi).clamp(-nmax, nmax - 1) as f32;
                    a[c] += wx * l;
                    b[c] += wi * l * l;
                }
            }
            (*slx, *sl2) = (a, b);
        }

        /// Σ w·l, Σ w·l·l, Σ w·l·x per lane, l = clamp(round(isc·(x-min)), 0, nmax).
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        pub(super) fn qkx_sums(
            x: &[f32],
            xm: &[f32],
            w: &[f32],
            nmax: i32,
            isc: &[f32; 8],
            sl: &mut [f32; 8],
            sl2: &mut [f32; 8],
            sxl: &mut [f32; 8],
        ) {
            let (mut a, mut b, mut c2) = (*sl, *sl2, *sxl);
            for ((&xi, &xmi), &wi) in x.iter().zip(xm).zip(w) {
                for c in 0..8 {
                    let l = nearest_int(isc[c] * xmi).clamp(0, nmax) as f32;
                    let wl = wi * l;
                    a[c] += wl;
                    b[c] += wl * l;
                    c2[c] += wl * xi;
                }
            }
            (*sl, *sl2, *sxl) = (a, b, c2);
        }

        /// Σ w·|s·l + m - x| (or its square) per lane.
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        pub(super) fn qkx_errors(
            x: &[f32],
            xm: &[f32],
            w: &[f32],
            nmax: i32,
            use_mad: bool,
            isc: &[f32; 8],
            ts: &[f32; 8],
            tm: &[f32; 8],
            err: &mut [f32; 8],
        ) {
            let mut e = *err;
            if use_mad {
                for ((&xi, &xmi), &wi) in x.iter().zip(xm).zip(w) {
                    for c in 0..8 {
                        let l = nearest_int(isc[c] * xmi).clamp(0, nmax) as f32;
                        let diff = ts[c] * l + tm[c] - xi;
                        e[c] += wi * diff.abs();
                    }
                }
            } else {
                for ((&xi, &xmi), &wi) in x.iter().zip(xm).zip(w) {
                    for c in 0..8 {
                        let l = nearest_int(isc[c] * xmi).clamp(0, nmax) as f32;
                        let diff = ts[c] * l + tm[c] - xi;
                        e[c] += wi * (diff * diff);
                    }
                }
            }
            *err = e;
        }
    }
}

/// Positive-only search for the super-block scale of sub-block scales or mins (ggml
/// `make_qp_quants`). Codes in `0..=nmax` (stored as u8, wrapping as in C); returns the scale.
pub(crate) fn make_qp_quants(x: &[f32], nmax: i32, l_out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = quant_weights[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Index of the nearest of the 16 ascending grid values (ggml `best_index_int8`).
#[inline]
pub(crate) fn best_index_int8(values: &[i8; 16], x: f32) -> usize {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

#[cfg(test)]
mod tests {
    //! The lane-parallel searches against the candidate-by-candidate transcription they
    //! replaced (which the encoder tests check byte for byte against llama.cpp): identical
    //! codes and bit-identical scales on many random groups, edge cases included.
    use super::*;

    fn ref_qx(x: &[f32], nmax: i32, l_out: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
        let n = x.len();
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            l_out[..n].fill(0);
            return 0.0;
        }
        let nmaxf = nmax as f32;
        let mut iscale = -nmaxf / max;
        let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
        if rmse_type == 0 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            return 1.0 / iscale;
        }
        let mut rmse_type = rmse_type;
        let mut return_early = false;
        if rmse_type < 0 {
            rmse_type = -rmse_type;
            return_early = true;
        }
        let weight = |i: usize| -> f32 {
            match qw {
                Some(w) => w[i],
                None => match rmse_type {
                    1 => x[i] * x[i],
                    2 => 1.0,
                    3 => x[i].abs(),
                    _ => x[i].abs().sqrt(),
                },
            }
        };
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = clamp(nearest_int(iscale * x[i]));
            l_out[i] = (l + nmax) as i8;
            let w = weight(i);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
        if return_early {
            return if suml2 > 0.0 { 0.5 * (scale + 1.0 / iscale) } else { 1.0 / iscale };
        }
        let mut best = scale * sumlx;
        for is in -9..=9 {
            if is == 0 {
                continue;
            }
            iscale = -(nmaxf + 0.1 * is as f32) / max;
            sumlx = 0.0;
            suml2 = 0.0;
            for i in 0..n {
                let l = clamp(nearest_int(iscale * x[i])) as f32;
                let w = weight(i);
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
                for i in 0..n {
                    l_out[i] = (nmax + clamp(nearest_int(iscale * x[i]))) as i8;
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        scale
    }

    #[allow(clippy::too_many_arguments)]
    fn ref_qkx(
        x: &[f32],
        nmax: i32,
        weights: &[f32],
        l_out: &mut [u8],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        qkx3: bool,
    ) -> (f32, f32) {
        let n = x.len();
        let w_at = |i: usize| weights[i];
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = w_at(0);
        let mut sum_x = sum_w * x[0];
        for i in 1..n {
            if x[i] < min {
                min = x[i];
            }
            if x[i] > max {
                max = x[i];
            }
            let w = w_at(i);
            sum_w += w;
            sum_x += w * x[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        let degenerate = if qkx3 { max <= min } else { max == min };
        if degenerate {
            l_out[..n].fill(0);
            return (0.0, -min);
        }
        let nmaxf = nmax as f32;
        let mut iscale = nmaxf / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best_error = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_out[i] = l as u8;
            let mut diff = scale * l as f32 + min - x[i];
            diff = if use_mad { diff.abs() } else { diff * diff };
            best_error += w_at(i) * diff;
        }
        if nstep < 1 {
            return (scale, -min);
        }
        let mut laux = vec![0u8; n];
        let laux = &mut laux[..];
        for is in 0..=nstep {
            iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
            let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
            for i in 0..n {
                let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
                laux[i] = l as u8;
                let w = w_at(i);
                let lf = l as f32;
                sum_l += w * lf;
                sum_l2 += w * lf * lf;
                sum_xl += w * lf * x[i];
            }
            let d = sum_w * sum_l2 - sum_l * sum_l;
            if d > 0.0 {
                let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
                let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sum_xl / sum_l2;
                }
                let mut cur_error = 0f32;
                for i in 0..n {
                    let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                    diff = if use_mad { diff.abs() } else { diff * diff };
                    cur_error += w_at(i) * diff;
                }
                if cur_error < best_error {
                    l_out[..n].copy_from_slice(laux);
                    best_error = cur_error;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        (scale, -min)
    }

    /// xorshift64*: deterministic test inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
        fn normal(&mut self) -> f32 {
            let (a, b) = (self.unit().max(1e-7), self.unit());
            (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
        }
    }

    /// A group of one of several shapes: gaussian, heavy-tailed, all positive, few distinct
    /// values (ties), tiny and huge magnitudes, mostly zero.
    fn group(r: &mut Rng, n: usize, kind: u64) -> Vec<f32> {
        let scale = [1.0, 1e-3, 1e3, 1e-30, 3e4][(r.next() % 5) as usize];
        (0..n)
            .map(|_| {
                let g = r.normal();
                scale
                    * match kind {
                        0 => g,
                        1 => g * g * g,
                        2 => g.abs() + 0.1,
                        3 => (g * 2.0).round() / 2.0,
                        4 => -(g.abs()),
                        _ => {
                            if r.next() % 4 == 0 {
                                g
                            } else {
                                0.0
                            }
                        }
                    }
            })
            .collect()
    }

    #[test]
    fn qx_lanes_equal_the_scalar_search() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for t in 0..20_000 {
            let n = [16, 32, 8, 48, 80][t % 5];
            let kind = r.next() % 6;
            let x = group(&mut r, n, kind);
            let nmax = [4, 8, 16, 32, 2][(t / 4) % 5];
            let qw: Vec<f32> = (0..n).map(|_| r.unit() * 3.0).collect();
            let rmse = [1, 2, 3, 4, -1][(t / 20) % 5];
            let w = if t % 3 == 0 { None } else { Some(&qw[..]) };
            let (mut a, mut b) = (vec![0i8; n], vec![0i8; n]);
            let sa = make_qx_quants(&x, nmax, &mut a, rmse, w);
            let sb = ref_qx(&x, nmax, &mut b, rmse, w);
            assert_eq!(sa.to_bits(), sb.to_bits(), "scale, case {t}");
            assert_eq!(a, b, "codes, case {t}");
        }
    }

    #[test]
    fn qkx_lanes_equal_the_scalar_search() {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        let params = [
            (3, -0.5, 0.1, 15, true, false),
            (15, -1.0, 0.1, 20, false, false),
            (31, -0.5, 0.1, 15, false, false),
            (15, -0.9, 0.05, 36, false, true),
            (31, -0.9, 0.05, 36, false, true),
            (3, -0.9, 0.05, 36, false, true),
        ];
        for t in 0..20_000 {
            let n = [16, 32, 7, 80][t % 4];
            let kind = r.next() % 6;
            let x = group(&mut r, n, kind);
            let (nmax, rmin, rdelta, nstep, mad, qkx3) = params[(t / 3) % params.len()];
            let w: Vec<f32> = if t % 2 == 0 {
                (0..n).map(|_| r.unit() * 2.0).collect()
            } else {
                x.iter().map(|v| v.abs() + 0.5).collect()
            };
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            let sa = make_qkx_quants(&x, nmax, &w, &mut a, rmin, rdelta, nstep, mad, qkx3);
            let sb = ref_qkx(&x, nmax, &w, &mut b, rmin, rdelta, nstep, mad, qkx3);
            assert_eq!((sa.0.to_bits(), sa.1.to_bits()), (sb.0.to_bits(), sb.1.to_bits()), "scale/min, case {t}");
            assert_eq!(a, b, "codes, case {t}");
        }
    }
}

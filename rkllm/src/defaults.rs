//! `rkllm_createDefaultParam` read without trusting the configured family: the library writes
//! its own family's `RKLLMParam` (208 bytes for 1.2, 184 for 1.3) into a buffer big enough
//! for either, and the bytes are decoded field by field in whichever layout is asked for. A
//! wrong family then gives nonsense values instead of a stack overwritten by 24 bytes, and
//! the nonsense is what tells the two families apart on Rockchip's library, which cannot say
//! which one it speaks.

use crate::abi::{v1_2, v1_3, RKLLMExtendParam};
use crate::library::AbiFamily;
use crate::params::{InitParams, Sampling};
use std::mem::offset_of;
use std::path::PathBuf;

/// Room for either family's `RKLLMParam`. A struct this size is returned through a buffer
/// the caller passes (x86_64 SysV: rdi; AArch64: x8), exactly as the real return types are,
/// so the library's writes land in it whatever size it believes the struct has.
#[repr(C, align(8))]
pub(crate) struct RawParam(pub(crate) [u8; 256]);

/// `rkllm_createDefaultParam`, declared with the oversized return buffer.
pub(crate) type RawDefaultFn = unsafe extern "C" fn() -> RawParam;

const _: () = assert!(std::mem::size_of::<v1_2::RKLLMParam>() <= 256);
const _: () = assert!(std::mem::size_of::<v1_3::RKLLMParam>() <= 256);

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads default parameters from the bytes a library wrote, in `family`'s layout. Every
/// bit pattern decodes (a bool is "nonzero"), so a wrong layout yields values, not UB.
pub(crate) fn decode(family: AbiFamily, raw: &RawParam) -> InitParams {
    let b = &raw.0[..];
    // The two layouts agree up to skip_special_token; they differ from there on.
    macro_rules! common {
        ($p:ty) => {
            (
                i32_at(b, offset_of!($p, max_context_len)),
                i32_at(b, offset_of!($p, max_new_tokens)),
                i32_at(b, offset_of!($p, n_keep)),
                Sampling {
                    top_k: i32_at(b, offset_of!($p, top_k)),
                    top_p: f32_at(b, offset_of!($p, top_p)),
                    temperature: f32_at(b, offset_of!($p, temperature)),
                    repeat_penalty: f32_at(b, offset_of!($p, repeat_penalty)),
                    frequency_penalty: f32_at(b, offset_of!($p, frequency_penalty)),
                    presence_penalty: f32_at(b, offset_of!($p, presence_penalty)),
                    mirostat: i32_at(b, offset_of!($p, mirostat)),
                    mirostat_tau: f32_at(b, offset_of!($p, mirostat_tau)),
                    mirostat_eta: f32_at(b, offset_of!($p, mirostat_eta)),
                },
                b[offset_of!($p, skip_special_token)] != 0,
                offset_of!($p, extend_param),
            )
        };
    }
    let (max_context_len, max_new_tokens, n_keep, sampling, skip_special_token, ext, ignore_eos) =
        match family {
            AbiFamily::V1_2 => {
                let (c, m, k, s, skip, ext) = common!(v1_2::RKLLMParam);
                (c, m, k, s, skip, ext, false)
            }
            AbiFamily::V1_3 => {
                let (c, m, k, s, skip, ext) = common!(v1_3::RKLLMParam);
                let eos = b[offset_of!(v1_3::RKLLMParam, ignore_eos_token)] != 0;
                (c, m, k, s, skip, ext, eos)
            }
        };
    InitParams {
        model_path: PathBuf::new(),
        max_context_len,
        max_new_tokens,
        n_keep,
        sampling,
        skip_special_token,
        ignore_eos_token: ignore_eos,
        n_batch: b[ext + offset_of!(RKLLMExtendParam, n_batch)],
        enabled_cpus_num: b[ext + offset_of!(RKLLMExtendParam, enabled_cpus_num)] as i8,
        enabled_cpus_mask: u32_at(b, ext + offset_of!(RKLLMExtendParam, enabled_cpus_mask)),
        base_domain_id: i32_at(b, ext + offset_of!(RKLLMExtendParam, base_domain_id)),
        embed_flash: b[ext + offset_of!(RKLLMExtendParam, embed_flash)] != 0,
    }
}

/// Why default parameters cannot be a runtime's real defaults, if they cannot. Only the
/// fields where the layouts differ tell the families apart; the shared head is checked too,
/// so that a library that is not RKLLM at all is not called either family.
pub(crate) fn implausible(p: &InitParams) -> Option<String> {
    if !(1..=8).contains(&p.n_batch) {
        return Some(format!("n_batch {}", p.n_batch));
    }
    if !(0..=64).contains(&p.enabled_cpus_num) {
        return Some(format!("enabled_cpus_num {}", p.enabled_cpus_num));
    }
    if !(1..=1 << 22).contains(&p.max_context_len) {
        return Some(format!("max_context_len {}", p.max_context_len));
    }
    if !(0.0..=1.0).contains(&p.sampling.top_p) {
        return Some(format!("top_p {}", p.sampling.top_p));
    }
    None
}

/// The family the bytes look like when `configured` does not fit them: its layout gives
/// nonsense, the other's gives plausible defaults.
pub(crate) fn other_family_fits(configured: AbiFamily, raw: &RawParam) -> Option<AbiFamily> {
    let other = match configured {
        AbiFamily::V1_2 => AbiFamily::V1_3,
        AbiFamily::V1_3 => AbiFamily::V1_2,
    };
    (implausible(&decode(configured, raw)).is_some() && implausible(&decode(other, raw)).is_none())
        .then_some(other)
}

/// What a library of `family` writes for `p`: the encoder matching [`decode`], field by
/// field, padding zero.
#[cfg(test)]
pub(crate) fn raw_of(family: AbiFamily, p: &InitParams) -> RawParam {
    let mut raw = RawParam([0; 256]);
    let b = &mut raw.0[..];
    let mut put = |at: usize, v: [u8; 4]| b[at..at + 4].copy_from_slice(&v);
    macro_rules! common {
        ($p:ty) => {{
            put(
                offset_of!($p, max_context_len),
                p.max_context_len.to_ne_bytes(),
            );
            put(
                offset_of!($p, max_new_tokens),
                p.max_new_tokens.to_ne_bytes(),
            );
            put(offset_of!($p, n_keep), p.n_keep.to_ne_bytes());
            put(offset_of!($p, top_k), p.sampling.top_k.to_ne_bytes());
            put(offset_of!($p, top_p), p.sampling.top_p.to_ne_bytes());
            put(
                offset_of!($p, temperature),
                p.sampling.temperature.to_ne_bytes(),
            );
            put(
                offset_of!($p, repeat_penalty),
                p.sampling.repeat_penalty.to_ne_bytes(),
            );
            let ext = offset_of!($p, extend_param);
            put(
                ext + offset_of!(RKLLMExtendParam, base_domain_id),
                p.base_domain_id.to_ne_bytes(),
            );
            put(
                ext + offset_of!(RKLLMExtendParam, enabled_cpus_mask),
                p.enabled_cpus_mask.to_ne_bytes(),
            );
            ext
        }};
    }
    let ext = match family {
        AbiFamily::V1_2 => common!(v1_2::RKLLMParam),
        AbiFamily::V1_3 => common!(v1_3::RKLLMParam),
    };
    b[ext + offset_of!(RKLLMExtendParam, n_batch)] = p.n_batch;
    b[ext + offset_of!(RKLLMExtendParam, enabled_cpus_num)] = p.enabled_cpus_num as u8;
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> InitParams {
        InitParams {
            max_context_len: 4096,
            enabled_cpus_num: 4,
            ..InitParams::default()
        }
    }

    #[test]
    fn each_layout_decodes_its_own_bytes() {
        for f in [AbiFamily::V1_2, AbiFamily::V1_3] {
            let d = decode(f, &raw_of(f, &defaults()));
            assert_eq!(d.n_batch, 1);
            assert_eq!(d.max_context_len, 4096);
            assert_eq!(d.enabled_cpus_num, 4);
            assert!(implausible(&d).is_none(), "{f}: {d:?}");
            assert_eq!(other_family_fits(f, &raw_of(f, &defaults())), None);
        }
    }

    #[test]
    fn the_other_layout_reads_nonsense_and_names_the_right_family() {
        for (lib, configured) in [
            (AbiFamily::V1_2, AbiFamily::V1_3),
            (AbiFamily::V1_3, AbiFamily::V1_2),
        ] {
            let raw = raw_of(lib, &defaults());
            let wrong = decode(configured, &raw);
            assert!(
                implausible(&wrong).is_some(),
                "{lib} as {configured}: {wrong:?}"
            );
            assert_eq!(other_family_fits(configured, &raw), Some(lib));
        }
    }

    #[test]
    fn bytes_of_no_family_are_not_called_either() {
        let raw = RawParam([0; 256]);
        for f in [AbiFamily::V1_2, AbiFamily::V1_3] {
            assert_eq!(other_family_fits(f, &raw), None);
        }
    }
}

//! Loads the embedded XDP program, attaches it, and pins its maps. The
//! returned [`Dataplane`] owns all of it: dropping it detaches the program
//! and removes the pins, so nothing outlives a clean exit by accident.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{maps, stats::Counter};
use tracing::{info, warn};

use crate::cli::XdpAttachMode;

/// The program object, built by build.rs from lb-ebpf.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

pub struct Dataplane {
    ebpf: Ebpf,
    pub iface: String,
    pin_dir: PathBuf,
    pinned: Vec<PathBuf>,
}

impl Dataplane {
    pub fn load(iface: &str, want: XdpAttachMode, pin_dir: PathBuf) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM)
            .context("loading the XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(maps::XDP_PROGRAM)
            .ok_or_else(|| anyhow!("no program '{}' in the object", maps::XDP_PROGRAM))?
            .try_into()?;
        prog.load().context("the kernel rejected the XDP program")?;
        let prog_id = prog.info().context("reading program info")?.id();
        let mode = attach(prog, iface, want)?;
        info!(iface, ?mode, prog_id, "XDP program attached");

        let mut dp = Dataplane {
            ebpf,
            iface: iface.to_owned(),
            pin_dir,
            pinned: Vec::new(),
        };
        dp.pin_maps()?;
        Ok(dp)
    }

    /// Pins every map under the pin directory so `bpftool map show pinned`
    /// and the tests can read them while we run. A stale pin from an agent
    /// that died is replaced.
    fn pin_maps(&mut self) -> Result<()> {
        for (name, map) in self.ebpf.maps() {
            // .bss/.data/.rodata hold globals, not state worth sharing.
            if name.starts_with('.') {
                continue;
            }
            let path = self.pin_dir.join(name);
            if path.exists() {
                fs::remove_file(&path)
                    .with_context(|| format!("removing stale pin {}", path.display()))?;
            }
            map.pin(&path)
                .with_context(|| format!("pinning map {name} at {}", path.display()))?;
            self.pinned.push(path);
        }
        Ok(())
    }

    pub fn reason_stats(&self) -> Result<PerCpuArray<&MapData, Counter>> {
        let map = self
            .ebpf
            .map(maps::REASON_STATS)
            .ok_or_else(|| anyhow!("no map {}", maps::REASON_STATS))?;
        Ok(PerCpuArray::try_from(map)?)
    }
}

fn attach(prog: &mut Xdp, iface: &str, want: XdpAttachMode) -> Result<XdpMode> {
    let try_mode = |prog: &mut Xdp, mode| {
        prog.attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))
    };
    match want {
        XdpAttachMode::Native => try_mode(prog, XdpMode::Driver).map(|_| XdpMode::Driver),
        XdpAttachMode::Generic => try_mode(prog, XdpMode::Skb).map(|_| XdpMode::Skb),
        XdpAttachMode::Auto => match try_mode(prog, XdpMode::Driver) {
            Ok(_) => Ok(XdpMode::Driver),
            Err(e) => {
                warn!(
                    iface,
                    "native XDP unavailable ({e:#}); falling back to generic (slower)"
                );
                try_mode(prog, XdpMode::Skb).map(|_| XdpMode::Skb)
            }
        },
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        for path in &self.pinned {
            if let Err(e) = fs::remove_file(path) {
                warn!("removing pin {}: {e}", path.display());
            }
        }
        // Only removes the directory if nothing else was pinned there.
        let _ = fs::remove_dir(&self.pin_dir);
        info!(iface = %self.iface, "XDP program detached");
    }
}

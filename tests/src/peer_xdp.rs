//! Lab-only XDP programs (test-ebpf's `lab-xdp` object, built by build.rs).

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use crate::Netns;

use crate::objects::LAB_XDP_OBJECT as LAB_XDP;

/// A lab program attached to an interface; detached on drop.
pub struct Attached {
    _ebpf: Ebpf,
}

/// Attaches `program` (`xdp_pass`, `xdp_tx_floor`) to `iface` inside `ns`, native mode.
pub fn attach(ns: &Netns, iface: &str, program: &'static str) -> Result<Attached> {
    let iface = iface.to_owned();
    let name = ns.name.clone();
    ns.run(move || -> Result<Attached> {
        let mut ebpf = Ebpf::load(LAB_XDP).context("loading the lab XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("no program {program}"))?
            .try_into()?;
        prog.load()?;
        prog.attach(&iface, XdpMode::Driver)
            .with_context(|| format!("attaching {program} to {iface} in {name}"))?;
        Ok(Attached { _ebpf: ebpf })
    })?
}

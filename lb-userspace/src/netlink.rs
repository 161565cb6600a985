//! A netlink route connection, as the agent's modules use it (the VIP, the
//! XDP mode, tracking): opened in the calling thread's network namespace,
//! its driver task ending with it.

use anyhow::{Context, Result};
use futures::TryStreamExt;
use rtnetlink::{Handle, packet_route::link::LinkMessage};
use tokio::task::JoinHandle;

pub struct Netlink {
    pub handle: Handle,
    task: JoinHandle<()>,
}

impl Netlink {
    pub fn open() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("opening a netlink route socket")?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// The link called `iface`, as RTM_GETLINK returns it.
    pub async fn link(&self, iface: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
        self.handle
            .link()
            .get()
            .match_name(iface)
            .execute()
            .try_next()
            .await
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! A LAN made of Linux network namespaces: a "switch" namespace holding a bridge, and one
//! namespace per host with a veth into the bridge and an address in a private /24 that exists
//! only inside these namespaces. mDNS works across the bridge; a host is cut off by taking its
//! port on the switch down. Everything is removed on drop.

use std::process::Command;

pub struct Lan {
    switch: String,
    hosts: Vec<String>,
    subnet: u8,
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// Builds a LAN of `hosts` hosts, or says why it cannot (not root, no namespaces, ...).
    pub fn create(hosts: usize) -> Result<Lan, String> {
        let tag = format!("cs{}", std::process::id() % 100_000);
        // A /24 picked per process, so that parallel runs never share one.
        let subnet = (std::process::id() % 200 + 20) as u8;
        let mut lan = Lan {
            switch: format!("{tag}sw"),
            hosts: Vec::new(),
            subnet,
        };
        ip(&["netns", "add", &lan.switch])?;
        ip(&["-n", &lan.switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let host = format!("{tag}h{i}");
            ip(&["netns", "add", &host])?;
            lan.hosts.push(host.clone());
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            let port = format!("p{i}");
            ip(&[
                "-n",
                &host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.switch,
            ])?;
            ip(&["-n", &lan.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lan.switch, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{}/24", lan.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up", "multicast", "on"])?;
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lan)
    }

    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Host `i`'s address (inside its namespace only).
    pub fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 1)
    }

    /// Cuts host `i` off the LAN.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "down"]).unwrap();
    }

    /// Reconnects host `i`.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.switch, "link", "set", &format!("p{i}"), "up"]).unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

//! Starting a created domain from its shape's template ([`crate::template`]): the template
//! made first when this agent has none, then a restore with the domain's identity. Any
//! step that fails boots the domain cold instead, and the start's event says why: a
//! template is a speed-up, never a reason for a clone not to start.

use std::time::{Duration, Instant};

use super::Agent;
use crate::domain_store::DomainRecord;
use crate::error::{AgentError, Result};
use crate::template::{self, xml, Image};

/// How long a template's guest may take to reach napalm-init's wait (a TCG boot on a
/// loaded host takes tens of seconds).
const TEMPLATE_BOOT: Duration = Duration::from_secs(180);
/// How long QEMU may take to listen, then to load the image.
const RESTORE: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts `record`'s domain (defined, not running) from its template; what the start's
    /// event says.
    pub(crate) async fn start_from_template(&self, record: &DomainRecord) -> Result<String> {
        let name = record.name.as_str();
        let files: Vec<(String, String)> = record
            .artifacts
            .iter()
            .map(|a| {
                let path = self.store.files_dir(name).join(&a.name);
                (path.to_string_lossy().into_owned(), a.blob.sha256.clone())
            })
            .collect();
        let key = match xml::template_key(&record.libvirt_xml, &files) {
            Ok(k) => k,
            Err(why) => return self.start_cold(name, &format!("no template: {why}")).await,
        };
        let short = &key[..12];
        let (image, made) = match self.template_image(&key, &record.libvirt_xml).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(domain = %name, template = %short, error = %e, "no template; booting cold");
                return self
                    .start_cold(name, &format!("template {short} failed: {e}"))
                    .await;
            }
        };
        let t = Instant::now();
        match self.restore(record, &image).await {
            Ok(bytes) => Ok(format!(
                "started on create from template {short} ({}; {} MiB of state in {:.2}s)",
                if made { "made now" } else { "kept" },
                bytes >> 20,
                t.elapsed().as_secs_f64()
            )),
            Err(e) => {
                tracing::warn!(domain = %name, template = %short, error = %e, "restore failed; booting cold");
                let (n, plain) = (name.to_owned(), record.libvirt_xml.clone());
                self.call(move |h| {
                    h.shutdown(&n, Duration::ZERO)?;
                    h.define(&plain).map(drop)
                })
                .await?;
                self.start_cold(name, &format!("restore from template {short} failed: {e}"))
                    .await
            }
        }
    }

    /// Destroys the template guests this agent left running (it stopped while making them:
    /// their napalm-init would wait for an identity for ever); a template being made is
    /// made again when a clone next needs it. Other agents' templates are theirs.
    pub async fn drop_stale_templates(&self) {
        let id = self.agent_id.clone();
        let dropped = self
            .call(move |h| {
                let mut dropped = Vec::new();
                for d in h.list()? {
                    if !d.name.starts_with(xml::TEMPLATE_PREFIX) {
                        continue;
                    }
                    let Some((_, x)) = h.find(&d.name)? else {
                        continue;
                    };
                    if xml::template_owner(&x).as_deref() == Some(id.as_str()) {
                        h.shutdown(&d.name, Duration::ZERO)?;
                        dropped.push(d.name);
                    }
                }
                Ok(dropped)
            })
            .await;
        match dropped {
            Ok(d) if !d.is_empty() => {
                tracing::warn!(templates = ?d, "destroyed template guests left by an earlier run")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not look for template guests left by an earlier run")
            }
        }
    }

    async fn start_cold(&self, name: &str, why: &str) -> Result<String> {
        let n = name.to_owned();
        self.call(move |h| h.start(&n)).await?;
        Ok(format!("started on create, cold ({why})"))
    }

    /// Template `key`'s image, made from `clone_xml` when there is none; whether it was
    /// made now.
    async fn template_image(&self, key: &str, clone_xml: &str) -> Result<(Image, bool)> {
        let lock = self.templates.lock(key);
        let _made_by_one = lock.lock().await;
        if let Some(i) = self.templates.image(key) {
            return Ok((i, false));
        }
        self.templates.prune(key);
        let dir = self.templates.dir(key);
        let _ = std::fs::remove_dir_all(&dir);
        crate::durable::create_dir(&dir)?;
        let console = dir.join("console.log");
        // With the agent's id: agents sharing a libvirtd (one per network namespace of a
        // host) make their templates side by side.
        let tpl_name = format!(
            "{}{}-{}",
            xml::TEMPLATE_PREFIX,
            &self.agent_id[..self.agent_id.len().min(8)],
            &key[..12]
        );
        let tpl = xml::template_xml(clone_xml, &tpl_name, &console, &self.agent_id)
            .map_err(|e| AgentError::Hypervisor(e.to_string()))?;
        let (n, id) = (tpl_name.clone(), self.agent_id.clone());
        self.call(move |h| {
            // One this agent left when it stopped while making it.
            if let Some((_, x)) = h.find(&n)? {
                if xml::template_owner(&x).as_deref() == Some(id.as_str()) {
                    h.shutdown(&n, Duration::ZERO)?;
                }
            }
            h.create_transient(&tpl)
        })
        .await?;
        let t = Instant::now();
        let waited = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match template::console(&console) {
                template::Console::Waiting => break Ok(()),
                // A napalm-init that does not know napalm.template boots on as the clone
                // whose command line the template has: stop it at once.
                template::Console::BootedOn => break Err(format!(
                    "its napalm-init went on to /sbin/init instead of waiting for an identity \
                     (an initramfs whose napalm-init predates napalm.template); its console ends: {}",
                    template::tail(&console, 600)
                )),
                template::Console::Booting => {}
            }
            let n = tpl_name.clone();
            let running = self
                .call(move |h| h.state(&n))
                .await?
                .is_some_and(|s| s.is_active());
            if !running {
                break Err(format!(
                    "its guest stopped before napalm-init waited for an identity; its console ends: {}",
                    template::tail(&console, 600)
                ));
            }
            if t.elapsed() > TEMPLATE_BOOT {
                break Err(format!(
                    "napalm-init did not wait for an identity within {}s; its console ends: {}",
                    TEMPLATE_BOOT.as_secs(),
                    template::tail(&console, 600)
                ));
            }
        };
        let (n, part, image) = (tpl_name.clone(), dir.join("image.part"), dir.join("image"));
        let saved = match waited {
            Ok(()) => {
                let p = part.clone();
                self.call(move |h| h.save(&n, &p)).await
            }
            Err(why) => Err(AgentError::Hypervisor(why)),
        };
        if let Err(e) = saved {
            let n = tpl_name.clone();
            let _ = self.call(move |h| h.shutdown(&n, Duration::ZERO)).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        std::fs::rename(&part, &image).map_err(|e| AgentError::io(&image, e))?;
        let i = Image::open(&image).map_err(|e| AgentError::Hypervisor(e.to_string()))?;
        tracing::info!(template = %&key[..12], boot_s = t.elapsed().as_secs_f64(), "template made");
        Ok((i, true))
    }

    /// Starts the defined domain of `record` from `image`; the bytes of state handed over.
    async fn restore(&self, record: &DomainRecord, image: &Image) -> Result<u64> {
        let bad = |e: xml::Unsuitable| AgentError::Hypervisor(e.to_string());
        let (cmdline, mac) = xml::identity_parts(&record.libvirt_xml).map_err(bad)?;
        let mut identity = cmdline;
        if let Some(mac) = mac {
            identity += &format!(" napalm.mac={mac}");
        }
        let now = self.clock.unix_ms();
        identity += &format!(" napalm.now={}.{:03}", now / 1000, now % 1000);
        identity += &format!(" napalm.seed={}", hex::encode(seed()?));
        let socket = self
            .templates
            .socket()
            .map_err(|e| AgentError::io(std::path::Path::new("incoming socket"), e))?;
        // In a file: libvirt 9.0 passes an entry's string to QEMU without doubling its
        // commas, and QEMU then reads the rest of a command line as its own options.
        let id_file = socket.with_extension("identity");
        write_identity(&id_file, &identity)?;
        let restore = xml::restore_xml(&record.libvirt_xml, &id_file, &socket).map_err(bad)?;
        // QEMU listens once started, and libvirt's start may wait on it: the state is
        // handed over from another thread, which gives up when the start failed.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (img, s, st) = (image.clone(), socket.clone(), std::sync::Arc::clone(&stop));
        let handing = tokio::task::spawn_blocking(move || template::stream(&img, &s, RESTORE, &st));
        let (n, plain) = (record.name.clone(), record.libvirt_xml.clone());
        let started = self
            .call(move |h| {
                h.define(&restore)?;
                let started = h.start(&n);
                // The persistent definition stays the plain one: a later start boots cold.
                h.define(&plain)?;
                started
            })
            .await;
        if started.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let sent = handing
            .await
            .map_err(|e| AgentError::Hypervisor(format!("the restore task failed: {e}")))?
            .map_err(|e| AgentError::Hypervisor(format!("handing the state to QEMU: {e}")));
        let sent = started.and(sent);
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&id_file);
        let sent = sent?;
        let n = record.name.clone();
        let state = self.call(move |h| h.state(&n)).await?;
        if !state.is_some_and(|s| s.is_active()) {
            // The image itself is suspect (a QEMU upgraded since it was saved cannot load
            // it): the next clone of this shape makes a new one.
            if let Some(dir) = image.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(AgentError::Hypervisor(format!(
                "QEMU stopped after loading the template's state (libvirt's log of the domain \
                 says why; the template is dropped); state {state:?}"
            )));
        }
        Ok(sent)
    }
}

/// Writes the identity QEMU puts in fw_cfg, readable by QEMU's user whatever the agent's
/// umask; the directory lets nobody else list it, and it is removed once QEMU started.
fn write_identity(path: &std::path::Path, identity: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(identity.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .map_err(|e| AgentError::io(path, e))
}

/// 32 bytes from the host's random source for the clone to mix in as it resumes.
fn seed() -> Result<[u8; 32]> {
    use std::io::Read;
    let mut b = [0u8; 32];
    let p = std::path::Path::new("/dev/urandom");
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| AgentError::io(p, e))?;
    Ok(b)
}

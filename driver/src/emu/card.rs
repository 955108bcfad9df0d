//! `EmulatedCard`: the card's `DeviceIo` face, its threads and fault injection.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vpu_ffi::{VPU_BAR0_SIZE, VPU_PCI_CLASS_NVME, VPU_PCI_DEVICE_ID, VPU_PCI_VENDOR_ID};

use crate::io::{BackendKind, DeviceInfo, DeviceIo, DmaDirection, HostRegion, IoError};

use super::controller::{self, Counters, Ctrl, Shared};
use super::dma::IovaTable;
use super::engine::{self, Engine};
use super::pci::{PciConfig, MSIX_VECTORS};
use super::{lock, regs, EmuConfig, EmuError, Fault};

/// An emulated VPU card. Dropping it stops its threads.
pub struct EmulatedCard {
    info: DeviceInfo,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for EmulatedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedCard")
            .field("name", &self.info.name)
            .field("engines", &self.shared.config.engines)
            .finish()
    }
}

/// A snapshot of the card's error and event counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmuCounters {
    /// Doorbell writes ignored (no such queue, value beyond the queue size).
    pub doorbell_errors: u64,
    /// Device accesses the IOVA table refused.
    pub dma_faults: u64,
    /// Completion entries written.
    pub completions: u64,
    /// Interrupts signalled.
    pub interrupts: u64,
    /// Interrupts swallowed by an injected lost-interrupt fault.
    pub interrupts_lost: u64,
    /// Completions corrupted by an injected fault.
    pub corrupted: u64,
    /// Times the controller entered fatal status.
    pub fatal_errors: u64,
}

impl EmulatedCard {
    /// Builds the card and starts its controller and engine threads.
    pub fn new(config: EmuConfig) -> Result<Arc<EmulatedCard>, EmuError> {
        config.validate()?;
        let name = config.name();
        let info = DeviceInfo {
            name: name.clone(),
            backend: BackendKind::Emulated,
            pci_address: config.pci_address(),
            vendor_id: VPU_PCI_VENDOR_ID as u16,
            device_id: VPU_PCI_DEVICE_ID as u16,
            class_code: VPU_PCI_CLASS_NVME,
        };
        let engines = (0..config.engines)
            .map(|i| {
                let at = usize::from(i);
                Arc::new(Engine::new(
                    i,
                    config.engine_codec(at),
                    config.engine_pixel_rate(at),
                ))
            })
            .collect();
        let (decoders, scalers, frame_memory) = (
            config.decode_engines,
            config.scale_engines,
            config.frame_memory,
        );
        let shared = Arc::new(Shared {
            name: name.clone(),
            config,
            iova: IovaTable::new(),
            ctrl: Mutex::new(Ctrl::new()),
            wake: Condvar::new(),
            engines,
            xcode: super::transcode::Transcoding::new(decoders, scalers, frame_memory),
            irqs: RwLock::new(Vec::new()),
            pci: Mutex::new(PciConfig::new()),
            removed: AtomicBool::new(false),
            bme: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lost_interrupts: AtomicU32::new(0),
            corrupt_completions: AtomicU32::new(0),
            counters: Counters::default(),
        });
        let card = Arc::new(EmulatedCard {
            info,
            shared: Arc::clone(&shared),
            threads: Mutex::new(Vec::new()),
        });
        let spawn = |thread: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(thread.clone())
                .spawn(f)
                .map_err(|source| EmuError::SpawnThread {
                    card: name.clone(),
                    thread,
                    source,
                })
        };
        // On an error `card` is dropped, which stops the threads already started.
        let s = Arc::clone(&shared);
        let handle = spawn(format!("{name}-ctrl"), Box::new(move || controller::run(s)))?;
        lock(&card.threads).push(handle);
        for e in &shared.engines {
            let (s, e2) = (Arc::clone(&shared), Arc::clone(e));
            let handle = spawn(
                format!("{name}-eng{}", e.index),
                Box::new(move || engine::run(s, e2)),
            )?;
            lock(&card.threads).push(handle);
        }
        for e in shared.xcode.engines() {
            let (s, e2) = (Arc::clone(&shared), Arc::clone(e));
            let handle = spawn(
                format!("{name}-{}{}", e.kind, e.index),
                Box::new(move || super::transcode::run(s, e2)),
            )?;
            lock(&card.threads).push(handle);
        }
        tracing::info!(card = %name, engines = shared.config.engines, "emulated card started");
        Ok(card)
    }

    /// The fault kinds [`Fault::parse`] accepts.
    pub fn fault_kinds() -> &'static [&'static str] {
        Fault::kinds()
    }

    /// Pictures held in the card's frame memory now (decoded or scaled, not released).
    pub fn frames_held(&self) -> usize {
        self.shared.xcode.frames.count()
    }

    /// The card's configuration.
    pub fn config(&self) -> &EmuConfig {
        &self.shared.config
    }

    /// Error and event counters.
    pub fn counters(&self) -> EmuCounters {
        let c = &self.shared.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        EmuCounters {
            doorbell_errors: get(&c.doorbell_errors),
            dma_faults: get(&c.dma_faults),
            completions: get(&c.completions),
            interrupts: get(&c.interrupts),
            interrupts_lost: get(&c.interrupts_lost),
            corrupted: get(&c.corrupted),
            fatal_errors: get(&c.fatal_errors),
        }
    }

    /// Number of live DMA mappings (what the host has not unmapped).
    pub fn dma_mappings(&self) -> usize {
        self.shared.iova.len()
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) -> Result<(), EmuError> {
        let s = &self.shared;
        tracing::warn!(card = %s.name, fault = ?fault, "injecting fault");
        let engines =
            |engine: Option<u8>| -> Result<Vec<&Arc<Engine>>, EmuError> {
                match engine {
                    None => Ok(s.engines.iter().collect()),
                    Some(i) => s.engines.get(usize::from(i)).map(|e| vec![e]).ok_or(
                        EmuError::InjectEngine {
                            card: s.name.clone(),
                            engine: i,
                            engines: s.config.engines,
                        },
                    ),
                }
            };
        match fault {
            Fault::HangEngine { engine, duration } => {
                let until = duration.map(|d| Instant::now() + d);
                for e in engines(engine)? {
                    e.hang(until);
                }
            }
            Fault::SlowEngine {
                engine,
                factor,
                duration,
            } => {
                let until = duration.map(|d| Instant::now() + d);
                for e in engines(engine)? {
                    e.slow(factor, until);
                }
            }
            Fault::LostInterrupt { count } => {
                s.lost_interrupts.fetch_add(count, Ordering::AcqRel);
            }
            Fault::CorruptCompletion { count } => {
                s.corrupt_completions.fetch_add(count, Ordering::AcqRel);
            }
            Fault::FatalStatus => {
                let mut ctrl = lock(&s.ctrl);
                s.fatal(&mut ctrl, "fault injection");
            }
            Fault::SurpriseRemoval => {
                s.removed.store(true, Ordering::Release);
                s.wake.notify_all();
            }
        }
        Ok(())
    }

    fn check_bar(bar: u32, offset: u64) -> Result<u32, IoError> {
        if bar != 0 || offset % 4 != 0 || offset + 4 > u64::from(VPU_BAR0_SIZE) {
            return Err(IoError::RegisterOutOfRange {
                bar,
                offset,
                width: 4,
            });
        }
        Ok(offset as u32)
    }
}

impl Drop for EmulatedCard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            // Taking the lock orders the store before the controller's next wait.
            let _ctrl = lock(&self.shared.ctrl);
            self.shared.wake.notify_all();
        }
        for e in &self.shared.engines {
            e.stop();
        }
        self.shared.xcode.stop();
        for t in lock(&self.threads).drain(..) {
            if t.join().is_err() {
                tracing::error!(card = %self.info.name, "a card thread panicked");
            }
        }
    }
}

impl DeviceIo for EmulatedCard {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read32(&self, bar: u32, offset: u64) -> Result<u32, IoError> {
        let offset = Self::check_bar(bar, offset)?;
        if self.shared.removed.load(Ordering::Acquire) {
            return Ok(u32::MAX);
        }
        Ok(regs::read(&lock(&self.shared.ctrl), offset))
    }

    fn write32(&self, bar: u32, offset: u64, value: u32) -> Result<(), IoError> {
        let offset = Self::check_bar(bar, offset)?;
        if self.shared.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut ctrl = lock(&self.shared.ctrl);
        regs::write(&self.shared, &mut ctrl, offset, value);
        Ok(())
    }

    fn config_read(&self, offset: u32, buf: &mut [u8]) -> Result<(), IoError> {
        if self.shared.removed.load(Ordering::Acquire) {
            buf.fill(0xff);
            return Ok(());
        }
        if lock(&self.shared.pci).read(offset as usize, buf) {
            Ok(())
        } else {
            Err(IoError::ConfigAccess {
                offset,
                len: buf.len(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        }
    }

    fn config_write(&self, offset: u32, buf: &[u8]) -> Result<(), IoError> {
        if self.shared.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        let bme = {
            let mut pci = lock(&self.shared.pci);
            if !pci.write(offset as usize, buf) {
                return Err(IoError::ConfigAccess {
                    offset,
                    len: buf.len(),
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            pci.bus_master()
        };
        let was = self.shared.bme.swap(bme, Ordering::AcqRel);
        if bme && !was {
            // Completions held while bus mastering was off can be written now.
            let mut ctrl = lock(&self.shared.ctrl);
            for q in 0..controller::QUEUE_PAIRS {
                super::queues::drain(&self.shared, &mut ctrl, q as u16);
            }
            super::queues::flush_interrupts(&self.shared, &mut ctrl);
            self.shared.wake.notify_all();
        }
        Ok(())
    }

    fn dma_map(&self, region: &Arc<HostRegion>, direction: DmaDirection) -> Result<u64, IoError> {
        if self.shared.removed.load(Ordering::Acquire) {
            return Err(IoError::Removed);
        }
        self.shared.iova.map(region, direction)
    }

    fn dma_unmap(&self, iova: u64, len: usize) -> Result<(), IoError> {
        self.shared.iova.unmap(iova, len)
    }

    fn max_interrupts(&self) -> u32 {
        u32::from(MSIX_VECTORS)
    }

    fn enable_interrupts(&self, count: u32) -> Result<Vec<Arc<EventFd>>, IoError> {
        if count == 0 || count > self.max_interrupts() {
            return Err(IoError::Interrupts {
                requested: count,
                supported: self.max_interrupts(),
                source: None,
            });
        }
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IoError::Interrupts {
                requested: count,
                supported: self.max_interrupts(),
                source: Some(e),
            })?;
        *self
            .shared
            .irqs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fds.clone();
        lock(&self.shared.pci).set_msix(true);
        Ok(fds)
    }

    fn disable_interrupts(&self) -> Result<(), IoError> {
        self.shared
            .irqs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        lock(&self.shared.pci).set_msix(false);
        Ok(())
    }

    /// Function-level reset: the controller returns to its power-on state (registers,
    /// queues, sessions, injected faults). As with vfio-pci, which saves and restores
    /// config space around a reset, the command register, DMA mappings and interrupt
    /// eventfds stay. A removed card stays removed.
    fn reset(&self) -> Result<(), IoError> {
        if self.shared.removed.load(Ordering::Acquire) {
            return Err(IoError::Removed);
        }
        let mut ctrl = lock(&self.shared.ctrl);
        regs::reset(&self.shared, &mut ctrl);
        ctrl.aqa = 0;
        ctrl.asq = 0;
        ctrl.acq = 0;
        ctrl.intms = 0;
        self.shared.wake.notify_all();
        tracing::info!(card = %self.info.name, "function-level reset");
        Ok(())
    }
}

//! PCI configuration space of the card: a type 0 header with the NVMe class code, a 64-bit
//! memory BAR0, the command register (Bus Master Enable gates all DMA) and an MSI-X
//! capability.

use vpu_ffi::{VPU_BAR0_SIZE, VPU_PCI_CLASS_NVME, VPU_PCI_DEVICE_ID, VPU_PCI_VENDOR_ID};

/// Size of PCI Express configuration space.
pub(super) const CONFIG_SIZE: usize = 4096;

// Standard type 0 header offsets (PCI Local Bus 3.0, section 6.1).
const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const BAR1: usize = 0x14;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_PIN: usize = 0x3d;

/// Command register bits the card implements: memory space, bus master, INTx disable.
const COMMAND_MEMORY: u16 = 1 << 1;
/// Bus Master Enable: without it the card fetches no command and performs no DMA.
pub(super) const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// BAR0: 64-bit memory BAR (type 10b in bits 2:1).
const BAR_MEM64: u32 = 0b100;

/// MSI-X capability (PCI Local Bus 3.0, section 6.8.2).
const MSIX_CAP: usize = 0x40;
const MSIX_CAP_ID: u8 = 0x11;
/// Table and PBA in BAR0 after the doorbells.
pub(super) const MSIX_TABLE_OFFSET: u32 = 0x2000;
pub(super) const MSIX_PBA_OFFSET: u32 = 0x3000;
/// Interrupt vectors the card offers.
pub(super) const MSIX_VECTORS: u16 = 64;
const MSIX_CONTROL_ENABLE: u16 = 1 << 15;

/// The card's configuration space.
#[derive(Debug)]
pub(super) struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
}

impl PciConfig {
    /// Power-on contents.
    pub fn new() -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
        };
        c.put16(VENDOR_ID, VPU_PCI_VENDOR_ID as u16);
        c.put16(DEVICE_ID, VPU_PCI_DEVICE_ID as u16);
        c.put16(STATUS, STATUS_CAPABILITIES);
        // Revision 1, then the 24-bit class code.
        c.put32(REVISION, (VPU_PCI_CLASS_NVME << 8) | 1);
        c.bytes[HEADER_TYPE] = 0;
        c.put32(BAR0, BAR_MEM64);
        c.put16(SUBSYSTEM_VENDOR_ID, VPU_PCI_VENDOR_ID as u16);
        c.put16(SUBSYSTEM_ID, VPU_PCI_DEVICE_ID as u16);
        c.bytes[CAPABILITIES_POINTER] = MSIX_CAP as u8;
        c.bytes[INTERRUPT_PIN] = 1;
        c.bytes[MSIX_CAP] = MSIX_CAP_ID;
        c.bytes[MSIX_CAP + 1] = 0;
        c.put16(MSIX_CAP + 2, MSIX_VECTORS - 1);
        c.put32(MSIX_CAP + 4, MSIX_TABLE_OFFSET); // BIR 0
        c.put32(MSIX_CAP + 8, MSIX_PBA_OFFSET); // BIR 0
        c
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// Reads `buf.len()` bytes at `offset`; false when out of range.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        match offset.checked_add(buf.len()) {
            Some(end) if end <= CONFIG_SIZE => {
                buf.copy_from_slice(&self.bytes[offset..end]);
                true
            }
            _ => false,
        }
    }

    /// Writes `data` at `offset` byte by byte, keeping read-only fields; false when out of
    /// range.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let Some(end) = offset.checked_add(data.len()).filter(|&e| e <= CONFIG_SIZE) else {
            return false;
        };
        for (at, &b) in (offset..end).zip(data) {
            self.write_byte(at, b);
        }
        true
    }

    fn write_byte(&mut self, at: usize, b: u8) {
        let writable_command = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        match at {
            a if a == COMMAND || a == COMMAND + 1 => {
                let mask = writable_command.to_le_bytes()[a - COMMAND];
                self.bytes[a] = (self.bytes[a] & !mask) | (b & mask);
            }
            a if (BAR0..BAR0 + 4).contains(&a) => {
                // Size probing: address bits below the BAR size are hard-wired to zero,
                // the type bits are read-only.
                let mask = (!(VPU_BAR0_SIZE - 1) & !0xf).to_le_bytes()[a - BAR0];
                self.bytes[a] = (self.bytes[a] & !mask) | (b & mask);
            }
            a if (BAR1..BAR1 + 4).contains(&a) => self.bytes[a] = b,
            a if a == MSIX_CAP + 3 => {
                // Message Control high byte: Enable (bit 15) and Function Mask (bit 14).
                self.bytes[a] = (self.bytes[a] & 0x3f) | (b & 0xc0);
            }
            _ => {}
        }
    }

    /// Command register bit 2.
    pub fn bus_master(&self) -> bool {
        self.get16(COMMAND) & COMMAND_BUS_MASTER != 0
    }

    /// Sets MSI-X Enable, as the kernel does when vectors are enabled through VFIO.
    pub fn set_msix(&mut self, enabled: bool) {
        let mut control = self.get16(MSIX_CAP + 2) & !MSIX_CONTROL_ENABLE;
        if enabled {
            control |= MSIX_CONTROL_ENABLE;
        }
        self.put16(MSIX_CAP + 2, control);
    }
}

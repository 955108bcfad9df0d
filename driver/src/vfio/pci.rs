//! PCI configuration space registers the backend touches (PCI Local Bus spec 3.0, §6.2;
//! names as in Linux's `pci_regs.h`). Generic PCI, so they live here rather than in the
//! card's header.

/// Vendor ID, 16 bits.
pub const PCI_VENDOR_ID: u32 = 0x00;
/// Device ID, 16 bits.
pub const PCI_DEVICE_ID: u32 = 0x02;
/// Command register, 16 bits.
pub const PCI_COMMAND: u32 = 0x04;
/// Revision ID (8 bits) followed by the 24-bit class code.
pub const PCI_CLASS_REVISION: u32 = 0x08;

/// Command: respond to memory space accesses (BARs).
pub const PCI_COMMAND_MEMORY: u16 = 1 << 1;
/// Command: Bus Master Enable. Without it the function's DMA and MSI/MSI-X writes are
/// dropped silently.
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Number of standard BARs.
pub const PCI_STD_NUM_BARS: u32 = 6;

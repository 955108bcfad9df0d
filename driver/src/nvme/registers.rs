//! Controller register fields: CAP decoding and the CC value the transport writes.

use std::time::Duration;

use vpu_ffi::{
    VPU_CAP_CSS_NVM, VPU_CAP_DSTRD_MASK, VPU_CAP_DSTRD_SHIFT, VPU_CAP_MPSMAX_MASK,
    VPU_CAP_MPSMAX_SHIFT, VPU_CAP_MPSMIN_MASK, VPU_CAP_MPSMIN_SHIFT, VPU_CAP_MQES_MASK,
    VPU_CAP_TO_MASK, VPU_CAP_TO_SHIFT, VPU_CC_CSS_SHIFT, VPU_CC_EN, VPU_CC_IOCQES_SHIFT,
    VPU_CC_IOSQES_SHIFT, VPU_CC_MPS_SHIFT, VPU_CQES_LOG2, VPU_SQES_LOG2,
};

/// PCI configuration space Command register and its bits (PCI Local Bus 3.0 §6.2.2).
pub(crate) const PCI_COMMAND: u32 = 0x04;
pub(crate) const PCI_COMMAND_MEMORY: u16 = 1 << 1;
pub(crate) const PCI_COMMAND_BUS_MASTER: u16 = 1 << 2;

/// CC.CSS value selecting the NVM command set.
const CC_CSS_NVM: u32 = 0;
/// CC.MPS for 4 KiB pages.
const CC_MPS_4K: u32 = 0;

/// Controller Capabilities, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// Largest queue the controller accepts, in entries.
    pub max_queue_entries: u32,
    /// CAP.TO: worst case time for CSTS.RDY to follow CC.EN.
    pub ready_timeout: Duration,
    pub doorbell_stride: u32,
    pub nvm_command_set: bool,
    pub mps_min: u32,
    pub mps_max: u32,
}

impl Capabilities {
    pub fn decode(cap: u64) -> Self {
        let field = |shift: u32, mask: u32| ((cap >> shift) & u64::from(mask)) as u32;
        let to_units = field(VPU_CAP_TO_SHIFT, VPU_CAP_TO_MASK);
        Self {
            max_queue_entries: (cap & u64::from(VPU_CAP_MQES_MASK)) as u32 + 1,
            // 500 ms units; a controller reporting 0 still gets one unit.
            ready_timeout: Duration::from_millis(500 * u64::from(to_units.max(1))),
            doorbell_stride: field(VPU_CAP_DSTRD_SHIFT, VPU_CAP_DSTRD_MASK),
            nvm_command_set: cap & VPU_CAP_CSS_NVM != 0,
            mps_min: field(VPU_CAP_MPSMIN_SHIFT, VPU_CAP_MPSMIN_MASK),
            mps_max: field(VPU_CAP_MPSMAX_SHIFT, VPU_CAP_MPSMAX_MASK),
        }
    }
}

/// CC with the NVM command set, 4 KiB pages, 64-byte SQ and 16-byte CQ entries, enabled.
pub(crate) fn cc_enable() -> u32 {
    (CC_CSS_NVM << VPU_CC_CSS_SHIFT)
        | (CC_MPS_4K << VPU_CC_MPS_SHIFT)
        | (VPU_SQES_LOG2 << VPU_CC_IOSQES_SHIFT)
        | (VPU_CQES_LOG2 << VPU_CC_IOCQES_SHIFT)
        | VPU_CC_EN
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_decode() {
        // MQES 0x3ff, CQR, TO 20 (10 s), DSTRD 2, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap: u64 = 0x3ff | (1 << 16) | (20 << 24) | (2 << 32) | (1 << 37) | (4 << 52);
        let c = Capabilities::decode(cap);
        assert_eq!(c.max_queue_entries, 0x400);
        assert_eq!(c.ready_timeout, Duration::from_secs(10));
        assert_eq!(c.doorbell_stride, 2);
        assert!(c.nvm_command_set);
        assert_eq!((c.mps_min, c.mps_max), (0, 4));
    }

    #[test]
    fn cc_has_entry_sizes_and_enable() {
        let cc = cc_enable();
        assert_eq!(cc & 1, 1);
        assert_eq!((cc >> 16) & 0xf, 6);
        assert_eq!((cc >> 20) & 0xf, 4);
        assert_eq!((cc >> 7) & 0xf, 0);
    }
}

//! The VFIO backend of `DeviceIo`: a real PCI function bound to vfio-pci.

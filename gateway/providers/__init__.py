"""Provider adapters: one per wire protocol, all speaking the normalized types in ``types``."""

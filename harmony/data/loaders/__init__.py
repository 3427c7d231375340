"""One loader per public trace, plus the generic table loader. Importing this registers them all."""

from harmony.data.loaders import alibaba, azure_llm, bitbrains, datacenter, fisher, table

__all__ = ["alibaba", "azure_llm", "bitbrains", "datacenter", "fisher", "table"]

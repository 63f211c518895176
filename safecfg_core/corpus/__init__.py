"""The pack's prompt corpus for real text-to-image models (``data/``, made by ``build.py`` from ``parts/``) and
readers that turn it, or a user's own prompt files, into the trainer's PromptSet. See docs/corpus.md."""
from .load import (BUILTIN, CONCEPTS_SUFFIX, SPLITS, LoadedPrompts, builtin_categories, builtin_concepts,
                   builtin_records, concepts_beside, list_prompt_files, load_prompt_set, load_prompts)
from .readers import (CATEGORY_SETTINGS, FORMATS, ConceptLines, PromptFileError, PromptRecord, ReadOptions,
                      normalize_category, parse_concept_lines, parse_concepts, parse_csv, parse_jsonl, parse_labeled,
                      parse_plain, read_concept_lines, read_concepts, read_prompt_file)

__all__ = ["BUILTIN", "CATEGORY_SETTINGS", "CONCEPTS_SUFFIX", "FORMATS", "SPLITS", "ConceptLines", "LoadedPrompts",
           "PromptFileError", "PromptRecord", "ReadOptions", "builtin_categories", "builtin_concepts", "builtin_records",
           "concepts_beside", "list_prompt_files", "load_prompt_set", "load_prompts", "normalize_category",
           "parse_concept_lines", "parse_concepts", "parse_csv", "parse_jsonl", "parse_labeled", "parse_plain",
           "read_concept_lines", "read_concepts", "read_prompt_file"]

"""Weight-only int8 and int4: the stored format, the reference modules, and quantizing while loading."""

"""A vision-language model as recipes hold it: its base (a released checkpoint or a tiny
random one), its jitted sampling and log-prob programs, and supervised fine-tuning."""

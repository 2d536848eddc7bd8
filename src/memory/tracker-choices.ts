/** What --tracker accepts (src/memory/dirty.ts): a module of its own so that help texts list it without the trackers. */
export const TRACKER_CHOICES = ['auto', 'hash', 'softdirty'] as const;
export type TrackerChoice = (typeof TRACKER_CHOICES)[number];
